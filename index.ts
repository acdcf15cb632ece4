/**
 * pg-replicate as a library: the same producer and consumers the CLI runs, and the interface a
 * destination of your own implements. A pipeline is a producer (reads the slot, enqueues
 * batches in Redis) and one consumer per destination (applies them); each runs until its
 * AbortSignal aborts, and any of them may run in another process or on another machine.
 *
 *   const stop = new AbortController();
 *   await Promise.all([
 *     runProducer({ pgUrl, redisUrl, pipeline: 'shop', publication: 'shop_pub', slot: 'shop_slot', destinations: ['files'] }, stop.signal),
 *     runConsumer({ redisUrl, pipeline: 'shop', name: 'files', destination: new MyDestination() }, stop.signal),
 *   ]);
 */

import type { Destination } from './consumers/destination.js';
import { RUNNER_DEFAULTS, type RunnerOptions } from './consumers/options.js';
import { PRODUCER_DEFAULTS, type ProducerOptions } from './producer/options.js';

export type { Destination, Quarantine, Step, StoredTable, TableListing, TableShape, TableState } from './consumers/destination.js';
export { PermanentError, RefusedError } from './consumers/destination.js';
export type { DestinationContext, DestinationPlugin } from './consumers/plugin.js';
export { builtInDestinations } from './consumers/plugins.js';
export { joinPieces } from './shared/chunks.js';
export { parseCopyRows } from './shared/csv.js';
export type { Column, Relation, ReplicaIdentity, RowChange, Value } from './shared/events.js';
export { qualifiedName, UNCHANGED } from './shared/events.js';
export type { Lsn, Version } from './shared/lsn.js';
export { formatLsn } from './shared/lsn.js';
export type { ProducerOptions, RunnerOptions };
export { PRODUCER_DEFAULTS, RUNNER_DEFAULTS };

/** A producer's settings: those without a default are required (see the CLI reference for each). */
export type ProducerSettings = Pick<ProducerOptions, 'pgUrl' | 'redisUrl' | 'pipeline' | 'publication' | 'slot'> & Partial<ProducerOptions>;

/** A consumer's settings: its Redis, pipeline and destination name, and the destination itself. */
export type ConsumerSettings = Pick<RunnerOptions, 'redisUrl' | 'pipeline' | 'name'> & Partial<RunnerOptions> & { destination: Destination };

/**
 * Runs the pipeline's producer until `signal` aborts: copies the published tables, then streams
 * every change, acknowledging the slot up to what every destination applied. What a human must
 * fix (a refused login, a missing publication, a lost slot) rejects with a UserError saying so.
 */
export async function runProducer(settings: ProducerSettings, signal: AbortSignal): Promise<void> {
  const { Producer } = await import('./producer/producer.js');
  const producer = new Producer({ ...PRODUCER_DEFAULTS, destinations: [], ...settings } as ProducerOptions);
  try {
    await producer.run(signal);
  } finally {
    await producer.close();
  }
}

/**
 * Runs one destination's consumer until `signal` aborts: applies its batches, in order per
 * table, retried in place when they fail, exactly once where the destination keeps its table
 * states with its data. The destination is closed at the end.
 */
export async function runConsumer(settings: ConsumerSettings, signal: AbortSignal): Promise<void> {
  const { ConsumerRunner } = await import('./consumers/runner.js');
  const { destination, ...options } = settings;
  const runner = new ConsumerRunner({ ...RUNNER_DEFAULTS, ...options }, destination);
  try {
    await runner.run(signal);
  } finally {
    await runner.close();
    await destination.close();
  }
}
