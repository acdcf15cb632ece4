import { keys } from '../shared/keys.js';
import { log } from '../shared/log.js';
import type { Lsn } from '../shared/lsn.js';
import { LAG_CHECK_MS } from './options.js';
import type { Session } from './session.js';

/**
 * The primary comes first (design invariant 7): a destination that leaves more than
 * --max-destination-lag-bytes of WAL unapplied — its consumer down for days, its warehouse
 * refusing writes — is detached, so that it stops holding the slot and Postgres can recycle
 * that WAL. Its consumer, when it runs again, registers anew and gets a fresh copy of every
 * table, then the stream.
 */
export class LagGuard {
  private lastCheck = Date.now();

  constructor(
    private readonly session: Session,
    /** The server's current WAL position. */
    private readonly walEnd: () => Promise<Lsn>,
    private readonly detach: (destination: string, reason: string) => Promise<void>,
  ) {}

  /** Called from the stream's loop; measures every few seconds. */
  async check(): Promise<void> {
    const { options, queues, watcher } = this.session;
    if (options.maxDestinationLagBytes <= 0 || Date.now() - this.lastCheck < LAG_CHECK_MS) return;
    this.lastCheck = Date.now();
    const end = await this.walEnd();
    if (watcher.paused) {
      await this.boundPause(end);
      return;
    }
    for (const [destination, applied] of watcher.appliedLsns) {
      const lag = end - applied;
      if (!queues.destinations.includes(destination) || lag <= BigInt(options.maxDestinationLagBytes)) continue;
      const reason = `${lag} bytes of WAL unapplied, more than --max-destination-lag-bytes ${options.maxDestinationLagBytes}`;
      log.warn(
        { destination, lagBytes: Number(lag) },
        'destination detached: it no longer holds the slot, its queued batches are dropped, and it gets a fresh copy of every table when its consumer runs again',
      );
      await this.detach(destination, reason);
    }
  }

  /**
   * Paused by an operator, every destination falls behind alike and none is to blame: none is
   * detached. The pause itself is bounded instead: once even the nearest destination is more
   * than --max-destination-lag-bytes behind, reading resumes.
   */
  private async boundPause(end: Lsn): Promise<void> {
    const { options, watcher, redis } = this.session;
    const nearest = Math.min(...[...watcher.appliedLsns.values()].map((applied) => Number(end - applied)));
    if (!Number.isFinite(nearest) || nearest <= options.maxDestinationLagBytes) return;
    log.warn(
      { lagBytes: nearest, maxDestinationLagBytes: options.maxDestinationLagBytes },
      'pause lifted: while paused the slot held more WAL than --max-destination-lag-bytes; reading resumes',
    );
    await redis.hdel(keys.state(options.pipeline), 'paused');
    watcher.paused = false;
  }
}
