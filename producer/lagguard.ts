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
}
