import { setTimeout as sleep } from 'node:timers/promises';
import { type Job, WaitingError } from 'bullmq';
import { errorMessage } from '../shared/errors.js';
import { log } from '../shared/log.js';
import { refusedAtMaxmemory } from '../shared/redis.js';

/** How often a Redis refusing writes at its maxmemory is said in the log. */
const SAY_EVERY_MS = 60_000;

/**
 * A Redis at its maxmemory (noeviction) refuses a consumer's writes until something frees
 * memory there: the consumer waits it out, saying so once a minute, and never fails a batch
 * for it (see ConsumerRunner.recordUntilTaken).
 */
export class FullRedis {
  private saidAt = 0;

  say(error: unknown): void {
    if (Date.now() - this.saidAt < SAY_EVERY_MS) return;
    this.saidAt = Date.now();
    log.warn(
      { err: errorMessage(error) },
      "Redis refuses this consumer's writes at its maxmemory: batches wait until it takes them (nothing is lost). Raise Redis' maxmemory or free memory there (another pipeline or application may fill it)",
    );
  }

  /** Runs `write` again (every second) while Redis refuses it at its maxmemory. */
  async waitOut(signal: AbortSignal, write: () => Promise<void>): Promise<void> {
    for (;;) {
      try {
        return await write();
      } catch (error) {
        if (!refusedAtMaxmemory(error) || signal.aborted) throw error;
        this.say(error);
        await sleep(1_000, undefined, { signal }).catch(() => {});
      }
    }
  }
}

/** Puts a job back at the front of its queue, untouched, for a consumer that stops. Should Redis refuse even that, its lock runs out and BullMQ puts it back. */
export async function putBack(job: Job, token: string | undefined): Promise<never> {
  await job.moveToWait(token).catch(() => {});
  throw new WaitingError();
}
