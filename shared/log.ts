import { isMainThread } from 'node:worker_threads';
import { pino } from 'pino';

/**
 * Logs go to stderr as JSON lines, so that stdout stays free for the stdout destination's
 * change stream.
 */
export const log = pino(
  {
    level: process.env.LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    redact: { paths: ['*.password', '*.pgUrl', '*.redisUrl', 'pgUrl', 'redisUrl'], censor: '***' },
  },
  // Synchronous on a worker thread (the producer's): its last lines must not be lost when it ends.
  pino.destination({ fd: 2, sync: !isMainThread }),
);

export type Logger = typeof log;
