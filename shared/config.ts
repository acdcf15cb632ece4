import { z } from 'zod';
import { UserError } from './errors.js';
import { NAME_PATTERN } from './keys.js';
import { parseRedisUrl, REDIS_URL_FORMS } from './redisurl.js';

/** Validation of everything a user passes, with messages that name the flag and say what is expected. */
const name = (what: string) => z.string({ error: `${what} is required` }).regex(NAME_PATTERN, `${what} may use only letters, digits, _ and - (at most 64)`);
/** A URL of one of these protocols; messages name `what` (the flag). */
export const url = (what: string, protocols: string[]) =>
  z.string({ error: `${what} is required` }).refine(
    (text) => {
      try {
        return protocols.includes(new URL(text).protocol);
      } catch {
        return false;
      }
    },
    `${what} must be a URL starting with ${protocols.map((protocol) => `${protocol}//`).join(' or ')}`,
  );
const positive = z.coerce.number().int().positive();

export const pgUrl = url('--pg-url (PG_URL)', ['postgres:', 'postgresql:']);
export const redisUrl = z.string({ error: '--redis-url (REDIS_URL) is required' }).superRefine((text, context) => {
  try {
    parseRedisUrl(text);
  } catch (error) {
    context.addIssue({ code: 'custom', message: `--redis-url (REDIS_URL) must be ${REDIS_URL_FORMS} (${(error as Error).message})` });
  }
});
export const pipelineId = name('--pipeline (PIPELINE_ID)');
export const destinationName = name('--name');

export const producerConfig = z.object({
  pgUrl,
  redisUrl,
  pipeline: pipelineId,
  publication: z.string({ error: '--publication (PUBLICATION) is required' }).min(1, '--publication (PUBLICATION) is required'),
  slot: z
    .string({ error: '--slot (SLOT) is required' })
    .regex(/^[a-z0-9_]{1,63}$/, '--slot (SLOT) may use only lower-case letters, digits and _ (Postgres slot names)'),
  mode: z.enum(['both', 'copy', 'cdc'], { error: '--mode must be both, copy or cdc' }),
  destinations: z.array(name('each of --destinations')).default([]),
  partitions: positive.max(1024),
  maxBatchChanges: positive,
  maxBatchBytes: positive,
  flushIntervalMs: positive,
  maxBacklogBatches: positive,
  maxBacklogBytes: positive,
  maxPendingTransactions: positive,
  /** Unapplied WAL (bytes) past which a destination is detached; 0: never. */
  maxDestinationLagBytes: z.coerce.number().int().nonnegative().default(0),
  statusIntervalMs: positive,
  heartbeatIntervalMs: positive,
  copyConnections: positive.max(64),
  copyChunkRows: positive,
  copyChunkBytes: positive,
  copyRangeBlocks: positive,
});

/** Where Prometheus metrics are served (shared/metrics); absent: not served. */
export const metricsPort = z.coerce
  .number({ error: '--metrics-port (METRICS_PORT) must be a TCP port number' })
  .int('--metrics-port (METRICS_PORT) must be a TCP port number')
  .min(1, '--metrics-port (METRICS_PORT) must be between 1 and 65535')
  .max(65535, '--metrics-port (METRICS_PORT) must be between 1 and 65535')
  .optional();

/** The producer thread's heap cap in MB (producer/thread.ts). */
export const heapMb = z.coerce
  .number({ error: '--heap-mb must be a whole number of megabytes' })
  .int('--heap-mb must be a whole number of megabytes')
  .min(48, '--heap-mb must be at least 48 (MB)');

export const runnerConfig = z.object({
  redisUrl,
  pipeline: pipelineId,
  name: destinationName,
  lockDurationMs: positive,
  stalledIntervalMs: positive,
  attemptsBeforePark: positive,
  concurrency: positive.optional(),
  register: z.union([z.boolean(), z.enum(['true', 'false', '1', '0']).transform((text) => text === 'true' || text === '1')]).optional(),
});

/** Parses with a schema, turning every problem into one UserError that lists them all. */
export function validate<T extends z.ZodType>(schema: T, input: unknown): z.infer<T> {
  // An empty flag or environment variable counts as not given.
  const given = input && typeof input === 'object' ? Object.fromEntries(Object.entries(input).filter(([, value]) => value !== '')) : input;
  const result = schema.safeParse(given);
  if (result.success) return result.data;
  // Messages written here name their flag; zod's own ("Too small: …") get it from the key.
  const problems = result.error.issues.map((issue) =>
    issue.message.startsWith('--') || issue.path.length === 0
      ? issue.message
      : `--${String(issue.path[0]).replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`)}: ${issue.message}`,
  );
  throw new UserError(`Invalid configuration: ${[...new Set(problems)].join('; ')}. See --help.`);
}
