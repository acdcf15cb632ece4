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
  pino.destination({ fd: 2, sync: false }),
);

export type Logger = typeof log;
