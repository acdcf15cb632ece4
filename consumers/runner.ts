import { setTimeout as sleep } from 'node:timers/promises';
import { type Job, Queue, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { joinPieces } from '../shared/chunks.js';
import { assertCodecVersion, decodeBatch, type EncodedBatch } from '../shared/codec.js';
import { errorMessage, UserError } from '../shared/errors.js';
import { type Batch, qualifiedName } from '../shared/events.js';
import { keys, QUEUE_PREFIX, queueName } from '../shared/keys.js';
import { log } from '../shared/log.js';
import { compareVersions } from '../shared/lsn.js';
import { connectRedis, heardQueue, loginRefused, readPipelineState, refusedAtMaxmemory } from '../shared/redis.js';
import { ChunkReader } from './chunkreader.js';
import { type Destination, PermanentError, RefusedError, type TableState } from './destination.js';
import { JOIN_LIMITS, LookAhead, type NextBatch } from './lookahead.js';
import { AppliedMarks } from './marks.js';
import { DestinationMetrics } from './metrics.js';
import type { Health, RunnerOptions } from './options.js';
import { copyIsNew, planBatches } from './plan.js';
import { Quarantines } from './quarantine.js';
import { FullRedis, putBack } from './redisfull.js';
import { Registration } from './registration.js';
import { Slots, SlottedWorker } from './slots.js';

const MAX_BACKOFF_MS = 60_000;
const REGISTRATION_CHECK_MS = 3_000;
/** A consumer started before its producer looks for the pipeline this often: it is a small read, and the copy's first chunk is ready soon after. */
const PIPELINE_CHECK_MS = 50;

/**
 * Runs one destination: a BullMQ worker per partition queue, each taking one batch at a time
 * (and, through the queue's global concurrency of 1, one at a time across all processes); with
 * --concurrency below the partition count, at most that many across this process's partitions.
 * A batch that fails is retried in place with backoff, never skipped and never moved behind
 * the next one; after a few attempts the partition is reported parked until it succeeds.
 */
export class ConsumerRunner {
  private readonly redis: Redis;
  private readonly chunks: ChunkReader;
  private readonly workers: Worker[] = [];
  private readonly queues: Queue[] = [];
  /** Partitions whose batch keeps failing, and how. */
  private readonly unhealthy = new Map<number, 'retrying' | 'parked'>();
  private readonly metrics: DestinationMetrics;
  private readonly ahead: LookAhead;
  /** Jobs (by chunk id) whose batches were applied with an earlier one, marked and released: in their turn they only complete. */
  private readonly appliedAhead = new Set<string>();
  private closing = false;
  private readonly fullRedis = new FullRedis();
  private readonly refusedLogin: Promise<UserError>;
  /** Redis refused the login for good: closing does not wait on it. */
  private loginError?: UserError;
  private readonly registration: Registration;
  private readonly marks: AppliedMarks;
  private readonly quarantines: Quarantines;
  /** The placements last written for status. */
  private publishedPlacements = '';
  /** With --concurrency below the partition count: the batches this process applies at once. */
  private slots?: Slots;

  constructor(
    private readonly options: RunnerOptions,
    private readonly destination: Destination,
  ) {
    this.redis = connectRedis(options.redisUrl);
    this.redis.on('error', (error) => log.debug({ err: errorMessage(error) }, 'redis connection error'));
    this.refusedLogin = loginRefused(this.redis);
    this.chunks = new ChunkReader(options.redisUrl);
    this.ahead = new LookAhead(this.chunks, options.pipeline, destination);
    this.quarantines = new Quarantines(this.redis, options.pipeline, options.name, destination);
    this.metrics = new DestinationMetrics(options.name, this.unhealthy, this.quarantines.tables);
    this.registration = new Registration(this.redis, options.pipeline, options.name, options.register ?? false);
    this.marks = new AppliedMarks(this.redis, options.pipeline, options.name);
  }

  /**
   * Runs until the signal aborts; rejects with the error to exit with once Redis has refused the
   * login for good (every command would wait for ever).
   */
  async run(signal: AbortSignal): Promise<void> {
    const refused = this.refusedLogin.then((error) => {
      this.loginError = error;
      throw error;
    });
    refused.catch(() => {});
    await Promise.race([this.work(signal), refused]);
  }

  private async work(signal: AbortSignal): Promise<void> {
    const partitions = await this.waitForPipeline(signal);
    if (signal.aborted) return;
    const concurrency = this.options.concurrency;
    if (concurrency !== undefined && concurrency < partitions) this.slots = new Slots(concurrency);
    // A name the pipeline does not know is refused (or registered) before anything runs.
    await this.fullRedis.waitOut(signal, () => this.registration.check());
    await this.fullRedis.waitOut(signal, () => this.quarantines.reportStored());
    for (let partition = 0; partition < partitions; partition++) {
      const name = queueName(this.options.pipeline, this.options.name, partition);
      this.queues.push(heardQueue(new Queue(name, { connection: this.redis, prefix: QUEUE_PREFIX })));
      const workerOptions = {
        connection: this.redis,
        prefix: QUEUE_PREFIX,
        concurrency: 1,
        lockDuration: this.options.lockDurationMs,
        stalledInterval: this.options.stalledIntervalMs,
        // A batch is never failed for stalling: it goes back to the front of its queue, however often.
        maxStalledCount: Number.MAX_SAFE_INTEGER,
      };
      const processor = (job: Job<EncodedBatch>, token?: string) => this.process(job, token);
      const worker = this.slots ? new SlottedWorker(name, processor, workerOptions, this.slots, this.redis) : new Worker(name, processor, workerOptions);
      worker.on('error', (error) =>
        refusedAtMaxmemory(error) ? this.fullRedis.say(error) : log.debug({ err: errorMessage(error), partition }, 'worker error'),
      );
      this.workers.push(worker);
    }
    log.info({ destination: this.options.name, pipeline: this.options.pipeline, partitions, concurrency: this.slots?.size ?? partitions }, 'consumer running');
    while (!signal.aborted) {
      await sleep(REGISTRATION_CHECK_MS, undefined, { signal }).catch(() => {});
      if (signal.aborted) break;
      await this.registration.check().catch((error) => {
        if (error instanceof UserError) throw error;
        // Redis unreachable for a moment: the workers wait for it too; the next check tries again.
        log.debug({ err: errorMessage(error) }, 'registration check failed');
      });
      // Off the batches' path: it looks at every table the destination knows.
      await this.publishPlacements().catch(() => {});
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    if (!this.loginError) {
      await this.registration.leave();
      await this.publishPlacements().catch(() => {});
    }
    this.slots?.close();
    await Promise.all(this.workers.map((worker) => worker.close()));
    await Promise.all(this.queues.map((queue) => queue.close()));
    this.chunks.close();
    this.redis.disconnect();
  }

  /** The consumer learns the partition count from the producer's record of the pipeline. */
  private async waitForPipeline(signal: AbortSignal): Promise<number> {
    let warned = false;
    while (!signal.aborted) {
      const state = await readPipelineState(this.redis, this.options.pipeline);
      if (state) return state.partitions;
      if (!warned) log.info({ pipeline: this.options.pipeline }, 'waiting for the producer of this pipeline to start');
      warned = true;
      await sleep(PIPELINE_CHECK_MS, undefined, { signal }).catch(() => {});
    }
    return 0;
  }

  private async process(job: Job<EncodedBatch>, token?: string): Promise<void> {
    if (job.id && this.appliedAhead.delete(job.id)) {
      this.ahead.dropReadAhead(job.id);
      return;
    }
    const encoded = job.data;
    const partition = encoded.n;
    const started = Date.now();
    let batch: Batch | undefined;
    /** The batch and those applied with it, once applied. */
    let applied: Batch[] = [];
    let records: Buffer[] | undefined;
    let joined = 0;
    let prepared = job.id ? this.ahead.takePrepared(partition, job.id) : undefined;
    let planned: 'ahead' | undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        const { run, mark } = await this.marks.runAndMark(partition);
        const earlier = run > encoded.e;
        if (!encoded.k && earlier) {
          // Streamed changes of an earlier producer run: the running one reads again from the
          // slot every change not yet acknowledged, so these come again in its batches. Applied
          // here they could be out of step: after Redis lost data, an ending run may still have
          // enqueued a few batches behind the lost ones, and applying those would make the
          // destination skip the lost changes when they come again. (Copy chunks stay: a
          // continued copy relies on the chunks its earlier run enqueued; see below for lost ones.)
          if (prepared) this.chunks.recycle(prepared.records);
          break;
        }
        // Of this producer run: it must follow the last batch this destination applied.
        if (!earlier) {
          if ((await this.marks.checkChain(partition, encoded, mark)) === 'applied') {
            if (prepared) this.chunks.recycle(prepared.records);
            break;
          }
        }
        if (prepared) ({ batch, records } = prepared);
        if (!batch) {
          assertCodecVersion(encoded);
          records = encoded.b ? await this.ahead.readChunk(encoded.b) : undefined;
          // Its records released already: this batch was applied, and its consumer stopped
          // before the queue heard so. Nothing to do.
          if (encoded.b && !records && (await this.marks.isApplied(partition, encoded))) break;
          if (encoded.b && !records) throw missingChunk(encoded.b);
          batch = decodeBatch(encoded, records && joinPieces(records));
        }
        const states = await this.destination.tableStates(batch.relations);
        const batches = [batch];
        if (batch.copy?.id && copyIsNew(batch.copy, states.get(batch.relations[batch.copy.relation].oid))) {
          batch.copy.copyText ??= await this.ahead.readChunk(batch.copy.id);
          if (!batch.copy.copyText) {
            // A copy of an earlier producer run whose rows went with Redis' data: the running
            // run, having found Redis without its record, copies the table again from the start.
            if (await this.marks.fromEarlierRun(encoded)) {
              log.warn(
                { partition, chunk: batch.copy.id, table: qualifiedName(batch.relations[batch.copy.relation]) },
                "copy chunk of an earlier producer run lost with Redis' data: dropped, the running producer copies the table again",
              );
              if (records) this.chunks.recycle(records);
              break;
            }
            throw missingChunk(batch.copy.id);
          }
          // After a failure the batch is retried alone: a bad chunk behind it fails in its own turn.
          if (attempt === 1) batches.push(...(await this.ahead.queuedCopies(this.queues[partition], batch)));
        }
        joined = batches.length - 1;
        // Planned ahead on the states the batch before was to leave: good if they are the states now.
        const ahead = prepared && sameStates(prepared.assumed, states);
        const plan = ahead ? prepared!.plan : planBatches(batches, states);
        planned = ahead ? 'ahead' : undefined;
        prepared = undefined;
        // Batches with a chunk tend to be followed by more (a copy, a large transaction): only
        // then is the next one looked up, not after every small batch of the stream. The next
        // batch of a large transaction is also decoded, planned and prepared meanwhile.
        const prepareNext = encoded.b && this.destination.prepare ? (next: NextBatch) => this.ahead.prepareNext(partition, next, plan.states) : undefined;
        const stopReadingAhead =
          attempt === 1 && (batch.copy?.id || encoded.b)
            ? this.ahead.readNextChunks(this.queues[partition], batches.length - 1, batch.copy ? JOIN_LIMITS.batches : 1, prepareNext)
            : undefined;
        try {
          if (plan.steps.length > 0 || plan.states.size > 0) await this.destination.apply(plan.steps, plan.states);
        } finally {
          stopReadingAhead?.();
        }
        applied = batches;
        await this.quarantines.noteReleased(states, plan.states, batch.relations);
        // The batches joined are applied as well: marked now, not when each job's turn comes
        // (at the end of a copy, the producer waits for the last mark).
        const last = batches[batches.length - 1];
        if (joined > 0) {
          await this.marks.complete(
            partition,
            last,
            batches.slice(1).map((next) => next.copy?.id),
            batches,
          );
          for (const next of batches.slice(1)) if (next.copy?.id) this.appliedAhead.add(next.copy.id);
        }
        // The destination is done with the rows, and with the records the changes pointed into.
        for (const applied of batches) if (applied.copy?.copyText) this.chunks.recycle(applied.copy.copyText);
        if (records) this.chunks.recycle(records);
        break;
      } catch (failure) {
        this.metrics.failed();
        let error = failure;
        if (error instanceof RefusedError && attempt >= 2 && batch) {
          // Refused twice: the tables the destination refuses are quarantined, the others applied.
          try {
            await this.quarantines.applyTableByTable(batch);
            applied = [batch];
            if (batch.copy?.copyText) this.chunks.recycle(batch.copy.copyText);
            if (records) this.chunks.recycle(records);
            break;
          } catch (again) {
            error = again;
          }
        }
        const parked = attempt >= this.options.attemptsBeforePark || error instanceof PermanentError;
        await this.report(partition, {
          state: parked ? 'parked' : 'retrying',
          attempts: attempt,
          error: errorMessage(error),
          since: new Date().toISOString(),
        });
        (parked ? log.error : log.warn).call(
          log,
          { partition, attempt, err: errorMessage(error) },
          parked ? 'batch cannot be applied: partition parked, retrying slowly until the cause is fixed' : 'batch failed; retrying in place',
        );
        await this.backOff(job, token, attempt);
      }
    }
    // Its chunk was read ahead, but the batch needed none (applied with the one before it, or earlier).
    if (job.id) this.ahead.dropReadAhead(job.id);
    await this.recordUntilTaken(job, token, () =>
      this.marks.complete(partition, { epoch: encoded.e, seq: encoded.s }, [batch?.copy?.id ?? encoded.b], applied),
    );
    // Replication lag: from the oldest commit in the batch to now, when it is durably applied.
    const lagMs = encoded.t === undefined ? undefined : Date.now() - encoded.t;
    log.debug(
      { partition, changes: batch?.changes.length, copyRows: batch?.copy?.rows, joined, planned, applyMs: Date.now() - started, lagMs },
      'batch applied',
    );
    this.metrics.applied(applied, started, encoded.t);
    if (this.unhealthy.has(partition)) await this.report(partition, { state: 'ok' });
  }

  /** Tells `status` where the destination put each table, when that changed (every few seconds, and at the end). */
  private async publishPlacements(): Promise<void> {
    const tables = this.destination.tables?.();
    if (!tables) return;
    const placements = new Map(tables.map((table) => [table.source, table.place]));
    const text = JSON.stringify([...placements].sort());
    if (text === this.publishedPlacements) return;
    const key = keys.places(this.options.pipeline, this.options.name);
    const update = this.redis.multi().del(key);
    if (placements.size > 0) update.hset(key, Object.fromEntries(placements));
    await update.exec();
    this.publishedPlacements = text;
  }

  /**
   * Records a batch the destination holds, retried in place until Redis takes it: BullMQ fails
   * a job whose processor throws, and a failed job sits aside, applied but unrecorded (the
   * producer then took the empty queue for lost writes). Stopping meanwhile, the job goes back
   * to its queue; applied again, it changes nothing.
   */
  private async recordUntilTaken(job: Job<EncodedBatch>, token: string | undefined, record: () => Promise<void>): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await record();
        return;
      } catch (error) {
        if (refusedAtMaxmemory(error)) this.fullRedis.say(error);
        else log.warn({ partition: job.data.n, attempt, err: errorMessage(error) }, 'batch applied, but its record failed; retrying in place');
        await this.backOff(job, token, attempt);
      }
    }
  }

  /** Waits before a batch's next attempt; stopping meanwhile, puts the batch back at the front of its queue, untouched. */
  private async backOff(job: Job<EncodedBatch>, token: string | undefined, attempt: number): Promise<void> {
    const wait = Math.min(MAX_BACKOFF_MS, 200 * 2 ** attempt) * (0.5 + Math.random() / 2);
    for (const until = Date.now() + wait; Date.now() < until && !this.closing; ) await sleep(100);
    if (this.closing) await putBack(job, token);
  }

  private async report(partition: number, health: Health): Promise<void> {
    if (health.state === 'ok') this.unhealthy.delete(partition);
    else this.unhealthy.set(partition, health.state);
    await this.redis.hset(keys.health(this.options.pipeline, this.options.name), String(partition), JSON.stringify(health)).catch(() => {});
  }
}

function sameStates(a: Map<number, TableState>, b: Map<number, TableState>): boolean {
  if (a.size !== b.size) return false;
  for (const [oid, state] of a) {
    const other = b.get(oid);
    if (
      !other ||
      other.copyLsn !== state.copyLsn ||
      other.copyChunk !== state.copyChunk ||
      other.copyDone !== state.copyDone ||
      compareVersions(other.applied, state.applied) !== 0 ||
      !other.quarantine !== !state.quarantine
    )
      return false;
  }
  return true;
}

function missingChunk(id: string): Error {
  return new Error(
    `chunk ${id} of this batch is missing from Redis (was Redis flushed or restarted without persistence?); the producer re-reads from the slot once it notices`,
  );
}
