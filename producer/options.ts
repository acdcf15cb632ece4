export interface ProducerOptions {
  pgUrl: string;
  redisUrl: string;
  pipeline: string;
  publication: string;
  slot: string;
  mode: 'both' | 'copy' | 'cdc';
  destinations: string[];
  partitions: number;
  maxBatchChanges: number;
  maxBatchBytes: number;
  flushIntervalMs: number;
  /** Unapplied batches (summed over partitions, worst destination) above which slot reading pauses. */
  maxBacklogBatches: number;
  /** Approximate unapplied bytes (worst destination) above which reading pauses: bounds Redis memory. */
  maxBacklogBytes: number;
  /**
   * Transactions read but not yet applied everywhere, above which reading pauses: the backlog
   * counts batches, and one batch may hold thousands of small transactions, each an entry in
   * the producer's memory.
   */
  maxPendingTransactions: number;
  /** WAL a destination may leave unapplied before it is detached (it stops holding the slot); 0: no bound. */
  maxDestinationLagBytes: number;
  statusIntervalMs: number;
  heartbeatIntervalMs: number;
  copyConnections: number;
  copyChunkRows: number;
  /** A copy chunk is also cut once it holds this many bytes (it streams into Redis: the producer never holds it). */
  copyChunkBytes: number;
  /** Heap blocks per CTID range of a table's copy: the unit of parallel copying and of resuming. */
  copyRangeBlocks: number;
}

export const PRODUCER_DEFAULTS = {
  mode: 'both',
  partitions: 8,
  // A large transaction arrives as batch after batch of this size (Batcher.flushAll), each a
  // destination transaction with a fixed cost (a commit, a few statements, the queue's round
  // trips). 20 000, 30 000 and 60 000 apply a 5 M-row insert in the same time (42–44 s) and a
  // 1 M-row update about as fast, but 60 000 took the consumer's peak from 260 to 300–306 MB.
  // Streams of small transactions flush by time (--flush-interval-ms) long before.
  maxBatchChanges: 30000,
  maxBatchBytes: 8 * 1024 * 1024,
  flushIntervalMs: 50,
  maxBacklogBatches: 1000,
  maxBacklogBytes: 256 * 1024 * 1024,
  maxPendingTransactions: 200_000,
  maxDestinationLagBytes: 0,
  statusIntervalMs: 10_000,
  heartbeatIntervalMs: 30_000,
  copyConnections: 2,
  // One DuckDB row group: a chunk is then one batch of whole row groups in DuckDB's insert,
  // written straight to its file, with nothing to merge. Queued chunks are applied together
  // (consumers/runner), so a chunk does not cost a transaction of its own.
  copyChunkRows: 122_880,
  copyChunkBytes: 64 * 1024 * 1024,
  copyRangeBlocks: 8192,
} as const;

/**
 * The producer thread's heap cap (MB): about five times what a streaming producer holds, so
 * collections stay rare, while V8 is kept from growing the heap far beyond what is live.
 */
export const PRODUCER_HEAP_MB = 128;

/** How often the producer reads the destinations' applied marks. */
export const POLL_MS = 100;
/** How often `--mode copy` looks whether the destinations have applied the whole copy: it exits as soon as they have. */
export const COPY_DONE_POLL_MS = 10;
/** Adds not yet acknowledged by Redis, in number and bytes, before reading pauses: bounds producer memory. */
export const MAX_PENDING_ADDS = 8;
export const MAX_PENDING_BYTES = 8 * 1024 * 1024;
/** How often the producer measures each destination's lag against the server's WAL position. */
export const LAG_CHECK_MS = 5_000;
