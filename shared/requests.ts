import { z } from 'zod';
import { NAME_PATTERN } from './keys.js';

/**
 * What `pg-replicate resync`, a starting consumer and `destinations remove` ask of the producer,
 * as JSON in the pipeline's request list. Anything else found there (written by hand, by an
 * older or newer version) is refused and moved aside, never retried.
 */
const destinationName = z.string().regex(NAME_PATTERN);
const requestSchema = z.union([
  z.strictObject({
    tableOid: z
      .number()
      .int()
      .positive()
      .max(2 ** 32 - 1),
    destinations: z.array(destinationName).min(1).optional(),
  }),
  z.strictObject({ addDestination: destinationName }),
  z.strictObject({ removeDestination: destinationName }),
]);

export type Request = z.infer<typeof requestSchema>;

export function encodeRequest(request: Request): string {
  return JSON.stringify(request);
}

/** The request, or why it is not one. */
export function parseRequest(text: string): { request: Request } | { error: string } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { error: 'not JSON' };
  }
  const result = requestSchema.safeParse(value);
  return result.success
    ? { request: result.data }
    : { error: 'not a request: expected {"tableOid": N, "destinations"?: [NAME…]}, {"addDestination": NAME} or {"removeDestination": NAME}' };
}
