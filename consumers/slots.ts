import { type Job, Worker, type WorkerOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import type { EncodedBatch } from '../shared/codec.js';

/**
 * At most `size` batches applied at once by this process, across all its partitions (the
 * consumer's --concurrency). Each partition still hands out one batch at a time across every
 * process; a process with fewer slots than partitions leaves the others to other processes, so
 * more processes apply more at once. That is what a destination bound by round trips needs to
 * scale out, and it bounds what one process holds in memory whatever the partition count.
 */
export class Slots {
  private used = 0;
  private readonly waiting: ((taken: boolean) => void)[] = [];
  private closed = false;

  constructor(readonly size: number) {}

  /** Takes a slot if one is free now. */
  tryTake(): boolean {
    if (this.closed || this.used >= this.size) return false;
    this.used++;
    return true;
  }

  /** Waits for a free slot and takes it; false once closing (nothing more is taken). */
  take(): Promise<boolean> {
    if (this.tryTake()) return Promise.resolve(true);
    if (this.closed) return Promise.resolve(false);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Gives a slot back: to the partition waiting longest, if any. */
  give(): void {
    const next = this.waiting.shift();
    if (next) next(true);
    else this.used--;
  }

  /** Stops handing out slots: the workers waiting for one fetch nothing, so they can close. */
  close(): void {
    this.closed = true;
    for (const waiting of this.waiting.splice(0)) waiting(false);
  }
}

/**
 * A partition's worker that takes a slot before it takes a batch from its queue, and gives it
 * back once the batch is finished. A batch is never taken and then held waiting for a slot: it
 * stays queued, free for another process. BullMQ's habit of taking the next batch of the same
 * queue as it completes one is turned off, so that every batch goes through the slots, and a
 * partition with a backlog cannot keep a slot from the others.
 */
export class SlottedWorker extends Worker<EncodedBatch> {
  constructor(
    name: string,
    processor: (job: Job<EncodedBatch>, token?: string) => Promise<void>,
    options: WorkerOptions,
    private readonly slots: Slots,
    private readonly redis: Redis,
  ) {
    super(name, processor, options);
  }

  protected override async moveToActive(token: string, name?: string): Promise<Job<EncodedBatch>> {
    if (!this.slots.tryTake()) {
      // Woken for a batch with every slot busy: the wake-up, which one worker of all processes
      // takes, is put back for a process with a free slot, or the partition would wait for this one.
      await this.wake();
      if (!(await this.slots.take())) return undefined as unknown as Job<EncodedBatch>;
    }
    try {
      const job = await super.moveToActive(token, name);
      if (!job) this.slots.give();
      return job;
    } catch (error) {
      this.slots.give();
      throw error;
    }
  }

  override async processJob(job: Job<EncodedBatch>, token: string): ReturnType<Worker<EncodedBatch>['processJob']> {
    try {
      return await super.processJob(job, token, () => false);
    } finally {
      this.slots.give();
      // BullMQ marks a queue as having work only when a batch is added to it below its global
      // concurrency; a batch finished without taking the next leaves none. The partition's next
      // batch is then taken by the first worker of any process with a free slot, instead of
      // waiting for a worker's blocking read to time out.
      await this.wake();
    }
  }

  /** Puts BullMQ's marker (a sorted set with member "0") on the queue: one blocked worker, of any process, looks for a batch. */
  private async wake(): Promise<void> {
    await this.redis.zadd(this.keys.marker, 0, '0').catch(() => {});
  }
}
