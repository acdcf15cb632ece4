/**
 * An error the user can fix: bad flags, an unreachable server, a database not set up for
 * logical replication. The CLI prints its message alone (no stack) and exits with code 2.
 */
export class UserError extends Error {
  override name = 'UserError';
}

/** Replaces the password in any connection URL found in a message, so secrets never reach logs. */
export function redact(text: string): string {
  return text.replace(/([a-z][a-z0-9+.-]*:\/\/[^:/@\s]*:)[^@\s]*@/gi, '$1***@');
}

export function errorMessage(error: unknown): string {
  return redact(error instanceof Error ? error.message : String(error));
}
