import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage, UserError } from '../shared/errors.js';
import { log } from '../shared/log.js';

/**
 * How long a stop may take before the process exits anyway (a batch being applied to a slow
 * destination, a server that does not answer): supervisors kill after about 10 s, and nothing
 * is lost by exiting, as after kill -9 — what was in flight is applied again, exactly once.
 */
const STOP_GRACE_MS = 8_000;

/**
 * Runs a long-lived command until SIGINT/SIGTERM, then closes it; a second signal, or a close
 * that takes longer than STOP_GRACE_MS, exits at once. A UserError exits with code 2 and its
 * message alone; anything else exits with code 1.
 */
export async function runUntilStopped(start: (signal: AbortSignal) => Promise<void>, close: () => Promise<void>): Promise<void> {
  const controller = new AbortController();
  const stop = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) {
      log.warn({ signal }, 'second signal while stopping: exiting now');
      process.exit(0);
    }
    controller.abort();
    setTimeout(() => {
      log.warn({ graceMs: STOP_GRACE_MS }, 'not stopped in time: exiting now (whatever was in flight is applied again by the next run)');
      process.exit(0);
    }, STOP_GRACE_MS).unref();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  try {
    await start(controller.signal);
  } finally {
    // Bounded as a stop is: a close waiting on a server that will not answer never keeps the process.
    const waited = new AbortController();
    const closed = close().catch((error) => log.warn({ err: errorMessage(error) }, 'error while shutting down'));
    await Promise.race([closed, sleep(STOP_GRACE_MS, undefined, { signal: waited.signal }).catch(() => {})]);
    waited.abort();
  }
}

export function exitWithError(error: unknown): never {
  if (error instanceof UserError) {
    process.stderr.write(`pg-replicate: ${errorMessage(error)}\n`);
    process.exit(2);
  }
  log.fatal({ err: errorMessage(error) }, 'pg-replicate failed');
  process.stderr.write(`pg-replicate: ${errorMessage(error)}\n`);
  process.exit(1);
}
