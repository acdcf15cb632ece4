import { UserError, errorMessage } from '../shared/errors.js';
import { log } from '../shared/log.js';

/**
 * Runs a long-lived command until SIGINT/SIGTERM, then closes it. A UserError exits with code 2
 * and its message alone; anything else exits with code 1.
 */
export async function runUntilStopped(start: (signal: AbortSignal) => Promise<void>, close: () => Promise<void>): Promise<void> {
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    await start(controller.signal);
  } finally {
    await close().catch((error) => log.warn({ err: errorMessage(error) }, 'error while shutting down'));
  }
}

export function exitWithError(error: unknown): never {
  if (error instanceof UserError) {
    process.stderr.write(`pg-replicate: ${errorMessage(error)}\n`);
    process.exit(2);
  }
  log.fatal({ err: errorMessage(error) }, 'pg-replicate failed');
  process.stderr.write(`pg-replicate: ${errorMessage(error)}\n`);
  process.exit(1);
}
