import { stat } from 'node:fs/promises';
import { errorMessage } from '../../shared/errors.js';
import { log } from '../../shared/log.js';

/** How long the destination has applied nothing before it checkpoints. */
export const IDLE_CHECKPOINT_MS = 1000;
/** The least WAL worth a checkpoint when idle (a quarter of DuckDB's default checkpoint_threshold). */
export const IDLE_CHECKPOINT_WAL_BYTES = 4 * 2 ** 20;

/**
 * Checkpoints the database once nothing has been applied for a second and its WAL holds at
 * least a few megabytes. DuckDB checkpoints only in a commit that takes the WAL past its
 * checkpoint_threshold (16 MB by default), so a burst of changes left its WAL for the next burst
 * to write into the file: in the 1 M-row update after 1 M inserts, the update's second batch
 * took 365–418 ms against 55 for the others, writing out the inserts. Idle, the consumer has
 * the time. A stream that never pauses for a second is checkpointed by DuckDB as before.
 *
 * `checkpoint` runs in turn with the applies (the destination's queue); a failure is logged
 * and left to the next apply, which meets a database DuckDB invalidated and opens it again.
 */
export class IdleCheckpoint {
  private applying = 0;
  private timer?: NodeJS.Timeout;
  private closed = false;

  constructor(
    /** The database's WAL file (`<path>.wal`; an in-memory or MotherDuck database has none on disk). */
    private readonly walPath: string,
    private readonly checkpoint: () => Promise<void>,
  ) {}

  /** An apply starts: no checkpoint until it and any others are done. */
  begin(): void {
    this.applying++;
    clearTimeout(this.timer);
  }

  /** An apply ended: the wait for idleness starts again once none is left. */
  end(): void {
    if (--this.applying > 0 || this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.checkpointIfIdle(), IDLE_CHECKPOINT_MS);
    // A consumer that is stopping does not wait for it.
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }

  private async checkpointIfIdle(): Promise<void> {
    const walBytes = await stat(this.walPath).then(
      (file) => file.size,
      () => 0,
    );
    if (walBytes < IDLE_CHECKPOINT_WAL_BYTES || this.applying > 0 || this.closed) return;
    try {
      await this.checkpoint();
      log.debug({ walBytes }, 'idle: DuckDB checkpointed its WAL');
    } catch (error) {
      log.warn({ err: errorMessage(error) }, 'idle: DuckDB checkpoint failed (the next batch tries again)');
    }
  }
}
