import { NAME_PATTERN } from './keys.js';

/**
 * What `pg-replicate resync`, a starting consumer and `destinations remove` ask of the producer,
 * as JSON in the pipeline's request list. Anything else found there (written by hand, by an
 * older or newer version) is refused and moved aside, never retried.
 */
export type Request = { tableOid: number; destinations?: string[] } | { addDestination: string } | { removeDestination: string };

/** Built when the first request comes: zod is a tenth of a second of the producer's start-up otherwise. */
async function requestSchema() {
  const { z } = await import('zod');
  const destinationName = z.string().regex(NAME_PATTERN);
  return z.union([
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
}
let schema: ReturnType<typeof requestSchema> | undefined;

export function encodeRequest(request: Request): string {
  return JSON.stringify(request);
}

/** The request, or why it is not one. */
export async function parseRequest(text: string): Promise<{ request: Request } | { error: string }> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { error: 'not JSON' };
  }
  schema ??= requestSchema();
  const result = (await schema).safeParse(value);
  return result.success
    ? { request: result.data }
    : { error: 'not a request: expected {"tableOid": N, "destinations"?: [NAME…]}, {"addDestination": NAME} or {"removeDestination": NAME}' };
}
