import type { Redis } from 'ioredis';
import type { Lsn } from '../shared/lsn.js';
import type { AckTracker } from './acks.js';
import type { Sequencer } from './batcher.js';
import type { ProducerOptions } from './options.js';
import type { BatchQueues } from './queues.js';
import type { AppliedWatcher } from './watcher.js';

/** What one producer session (a run from the slot's confirmed position) shares between its copy and its stream. */
export interface Session {
  options: ProducerOptions;
  redis: Redis;
  epoch: number;
  sequencer: Sequencer;
  tracker: AckTracker;
  queues: BatchQueues;
  watcher: AppliedWatcher;
  signal: AbortSignal;
  /** The largest row Redis takes in one value (producer/oversize). */
  largestRowBytes: number;
}

/** The LSN last acknowledged to Postgres, shared by a producer's successive sessions. */
export interface AckPosition {
  lsn: Lsn;
}
