import { setTimeout as sleep } from 'node:timers/promises';
import type { Queue } from 'bullmq';
import { chunkKeys, isChunkId, joinPieces } from '../shared/chunks.js';
import { decodeBatch, type EncodedBatch } from '../shared/codec.js';
import type { Batch } from '../shared/events.js';
import type { ChunkReader } from './chunkreader.js';
import type { Destination, TableState } from './destination.js';
import { planBatches } from './plan.js';

/**
 * Copy batches applied together at most (the first and those queued behind it), and their rows'
 * bytes. Everything joined is in memory and in staging files at once, and as much again is read
 * ahead: 24 MiB (two or three narrow chunks) loads a 2 M-row backfill as fast as 64 MiB did
 * (2.9 against 3.0 s, side by side) with the consumer's peak at 317 MB rather than 390–410;
 * 16 MiB cost a quarter more CPU. But a chunk that fits one of DuckDB's CSV buffers
 * (`oneBuffer`), applied on its own, is read by one of its threads: such chunks go at least
 * `least` to a transaction whatever their bytes (arrays, 28 MB chunks, alone: 17–20 s against
 * 14–17 s for 2 M rows); larger ones are split between the threads anyway.
 */
export const JOIN_LIMITS = { batches: 8, bytes: 24 * 1024 * 1024, least: 2, oneBuffer: 32 * 1000 * 1000 };

/** Whether a transaction of `count` copy batches holding `bytes` is full before a chunk of `size` bytes joins. */
function joinIsFull(count: number, bytes: number, size: number, stretch = 1): boolean {
  if (count >= JOIN_LIMITS.batches * stretch) return true;
  return bytes + size > JOIN_LIMITS.bytes * stretch && (count >= JOIN_LIMITS.least || size >= JOIN_LIMITS.oneBuffer);
}
/** While a transaction is applied, the queue is looked at this often for the chunks to read ahead for the next. */
const READ_AHEAD_POLL_MS = 20;
/** Chunks read ahead this long ago and not taken are dropped: their batches went to another process. */
const STALE_READ_AHEAD_MS = 30_000;

/** Chunks read before their batches' turn, by chunk id (undefined: not found, or the read failed). */
type ReadAhead = Map<string, Promise<Buffer[] | undefined>>;

export type Plan = ReturnType<typeof planBatches>;

/**
 * The batch next in line, decoded and planned while the one before it was applied, on the
 * states that one was to leave; the destination prepared its steps too.
 */
export interface PreparedBatch {
  jobId: string;
  records: Buffer[];
  batch: Batch;
  plan: Plan;
  /** The states of the batch's tables it was planned on. */
  assumed: Map<number, TableState>;
}

/** A queued batch whose records were read ahead. */
export interface NextBatch {
  jobId: string;
  encoded: EncodedBatch;
  records: Buffer[];
}

/**
 * What the runner does ahead of a batch's turn, while the one before it is applied: reading the
 * chunks of the batches next in line (a copy's, a large transaction's), preparing the next batch
 * of a large transaction (decoded, planned, its rows encoded by the destination), and finding
 * the copy chunks queued right behind one, to apply them together.
 */
export class LookAhead {
  /**
   * The chunks of the batches next in line in some partition, read while the current ones are
   * applied: one partition and one transaction's worth at a time.
   */
  private readAhead?: ReadAhead;
  private readAheadSince = 0;
  /** Per partition, its next batch made ready while the current one is applied (a large transaction's batches). */
  private readonly prepared = new Map<number, PreparedBatch>();

  constructor(
    private readonly chunks: ChunkReader,
    private readonly pipeline: string,
    private readonly destination: Destination,
  ) {}

  /** A chunk's bytes: those read ahead, or from Redis. */
  async readChunk(id: string): Promise<Buffer[] | undefined> {
    const ahead = await this.takeReadAhead(id);
    return ahead ?? this.chunks.read(chunkKeys.data(this.pipeline, id));
  }

  /** The read of this chunk started ahead, if any, now no longer ahead; the next read ahead can start once none is. */
  private takeReadAhead(id: string): Promise<Buffer[] | undefined> | undefined {
    const read = this.readAhead?.get(id);
    this.readAhead?.delete(id);
    if (this.readAhead?.size === 0) this.readAhead = undefined;
    return read;
  }

  /** Forgets a chunk read ahead for a batch that did not need it, its pieces back to the pool. */
  dropReadAhead(id: string): void {
    void this.takeReadAhead(id)?.then((pieces) => pieces && this.chunks.recycle(pieces));
  }

  /**
   * The copy batches queued right behind `first` for the same copy of the same table, with their
   * rows: applied with it in one transaction, and by DuckDB in one statement (its threads each
   * take their own chunks: the 12 chunks of a 2 M-row copy load in 1.3 s instead of 2.2 one by
   * one). Each is still its own job: it completes in its turn, finding its chunk applied. Only
   * the batches right behind are joined, so the order of applying is the queue's.
   */
  async queuedCopies(queue: Queue, first: Batch): Promise<Batch[]> {
    const copy = first.copy!;
    if (copy.merge || copy.last) return [];
    const table = first.relations[copy.relation].oid;
    // The copy's chunks queued behind, as far as two transactions' worth, and whether its last is among them.
    const queued: Batch[] = [];
    let endInView = false;
    let chunk = copy.chunk;
    let seq = first.seq;
    for (const job of await queue.getJobs(['wait'], 0, 2 * JOIN_LIMITS.batches - 2, true)) {
      const encoded = job.data as EncodedBatch | undefined;
      if (!encoded?.k || encoded.b) break;
      // Only the batches that follow one another: a gap (Redis lost some) is found in its own turn.
      if (encoded.q !== undefined && (encoded.e !== first.epoch || encoded.q !== seq)) break;
      seq = encoded.s;
      const next = decodeBatch(encoded);
      const nextCopy = next.copy!;
      const sameCopy = next.relations[nextCopy.relation].oid === table && nextCopy.snapshotLsn === copy.snapshotLsn;
      if (!sameCopy || nextCopy.merge || nextCopy.chunk <= chunk) break;
      endInView = nextCopy.last;
      // A chunk without rows joins only as the copy's last: it marks the copy complete.
      if (!nextCopy.id && !endInView) break;
      chunk = nextCopy.chunk;
      queued.push(next);
      if (endInView) break;
    }
    // With the copy's end in view, a remainder of a quarter of a transaction's worth joins the
    // transaction before it: applied on its own, a chunk loads on one of DuckDB's threads and
    // costs twice the time of one among eight (shared evenly, 5 + 4 cost as much as 8 + 1).
    const stretch = endInView && 1 + queued.length <= JOIN_LIMITS.batches * 1.25 ? 1.25 : 1;
    const joined: Batch[] = [];
    let bytes = copy.bytes;
    for (const next of queued) {
      if (joinIsFull(joined.length + 1, bytes, next.copy!.bytes, stretch)) break;
      bytes += next.copy!.bytes;
      joined.push(next);
    }
    const rows = await Promise.all(joined.map((next) => (next.copy!.id ? this.readChunk(next.copy!.id) : [])));
    const missing = rows.findIndex((text) => !text);
    if (missing >= 0) joined.length = missing;
    for (const [index, next] of joined.entries()) next.copy!.copyText = rows[index];
    return joined;
  }

  /**
   * Starts reading the chunks of the `count` batches queued from `skip` places behind the next
   * one in the partition's queue (their jobs are named after them): a copy's, as many as are
   * applied together at most; a large transaction's, the next one, which `prepareNext` then gets.
   * Reading them from Redis overlaps applying these: read when their turn came, a transaction's
   * chunks kept DuckDB idle for a tenth of a backfill. While the producer is still queueing
   * them, it looks again until the apply ends (call the function returned). Chunks do not
   * change while a destination holds them; a read that fails or finds nothing is simply read
   * again.
   */
  readNextChunks(queue: Queue, skip: number, count: number, prepareNext?: (next: NextBatch) => void): () => void {
    let applying = true;
    // Chunks read ahead for batches that never came (another process of this destination took
    // them) must not stop this one reading ahead for good.
    if (this.readAhead && Date.now() - this.readAheadSince > STALE_READ_AHEAD_MS) {
      for (const id of [...this.readAhead.keys()]) this.dropReadAhead(id);
    }
    if (this.readAhead) return () => {};
    const ahead: ReadAhead = new Map();
    this.readAhead = ahead;
    this.readAheadSince = Date.now();
    const lookAhead = async () => {
      let bytes = 0;
      let listed = 0;
      while (applying && this.readAhead === ahead && listed < count) {
        const before = listed;
        for (const job of await queue.getJobs(['wait'], skip + listed, skip + count - 1, true)) {
          if (!applying || !job?.id || !isChunkId(job.id) || this.readAhead !== ahead) return;
          const encoded = job.data as EncodedBatch;
          const size = encoded.k ? decodeBatch(encoded).copy!.bytes : 0;
          if (listed > 0 && joinIsFull(listed, bytes, size)) return;
          bytes += size;
          const read = this.chunks.read(chunkKeys.data(this.pipeline, job.id)).catch(() => undefined);
          ahead.set(job.id, read);
          if (listed === 0 && prepareNext && encoded.b && !encoded.k) {
            const jobId = job.id;
            // Taken from the read-ahead only while the apply before it still runs: afterwards the
            // batch's own turn may have begun and read it from there.
            void read.then((records) => {
              if (!applying || !records || this.readAhead?.get(jobId) !== read) return;
              void this.takeReadAhead(jobId);
              prepareNext({ jobId, encoded, records });
            });
          }
          listed++;
        }
        if (listed === before) await sleep(READ_AHEAD_POLL_MS);
      }
    };
    lookAhead()
      // A read ahead that fails is a miss: the batch reads its chunk itself, and reports errors.
      .catch(() => {})
      .finally(() => {
        if (this.readAhead === ahead && ahead.size === 0) this.readAhead = undefined;
      });
    return () => (applying = false);
  }

  /**
   * Decodes and plans the partition's next batch while the current one is applied, on the
   * states the current one is to leave (and, for other tables, the states now), and lets the
   * destination prepare its steps: the batch's turn then starts with DuckDB's, not with this
   * work on the main thread. Its turn checks that the states are those before using the plan.
   */
  async prepareNext(partition: number, next: NextBatch, statesAfterCurrent: Map<number, TableState>): Promise<void> {
    try {
      const batch = decodeBatch(next.encoded, joinPieces(next.records));
      const assumed = await this.destination.tableStates(batch.relations);
      for (const { oid } of batch.relations) {
        const state = statesAfterCurrent.get(oid);
        if (state) assumed.set(oid, state);
      }
      const plan = planBatches([batch], assumed);
      this.destination.prepare?.(plan.steps);
      this.dropPrepared(partition);
      this.prepared.set(partition, { jobId: next.jobId, records: next.records, batch, plan, assumed });
    } catch {
      // It fails again in its own turn, and is reported there.
      this.chunks.recycle(next.records);
    }
  }

  /** The partition's batch prepared ahead, if it is this job's; one prepared for another job is dropped. */
  takePrepared(partition: number, jobId: string): PreparedBatch | undefined {
    const prepared = this.prepared.get(partition);
    if (prepared?.jobId === jobId) {
      this.prepared.delete(partition);
      return prepared;
    }
    this.dropPrepared(partition);
    return undefined;
  }

  private dropPrepared(partition: number): void {
    const prepared = this.prepared.get(partition);
    if (!prepared) return;
    this.prepared.delete(partition);
    this.chunks.recycle(prepared.records);
  }
}
