/** A consumer's settings, apart from the runner (the CLI reads them without loading BullMQ). */
export interface RunnerOptions {
  redisUrl: string;
  pipeline: string;
  /** The destination's name: its queues, its applied marks, its health. */
  name: string;
  /** A consumer that dies holds its partition for at most about lockDurationMs + stalledIntervalMs. */
  lockDurationMs: number;
  stalledIntervalMs: number;
  /** Failed attempts of one batch before its partition is reported as parked. */
  attemptsBeforePark: number;
  /** Batches this process applies at once, across its partitions (undefined: one per partition). */
  concurrency?: number;
  /** A name the pipeline does not know is added (with a copy of every table) rather than refused. */
  register?: boolean;
}

export const RUNNER_DEFAULTS = { lockDurationMs: 10_000, stalledIntervalMs: 5_000, attemptsBeforePark: 8 } as const;

/** A destination partition's health, as the runner reports it in Redis. */
export type Health = { state: 'ok' } | { state: 'retrying' | 'parked'; attempts: number; error: string; since: string };
