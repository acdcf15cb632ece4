import { isMainThread } from 'node:worker_threads';
import { pino } from 'pino';

/**
 * Logs go to stderr, so that stdout stays free for the stdout destination's change stream: JSON
 * lines with ISO times, or readable lines on a terminal. `--log-format` (or LOG_FORMAT) chooses
 * `json` or `pretty`; by default, pretty on a terminal and JSON otherwise. Read from the command
 * line here, not by the CLI's parser: every module logs from the moment it loads.
 */
function logFormat(): string {
  const at = process.argv.indexOf('--log-format');
  const given = at >= 0 ? process.argv[at + 1] : process.argv.find((arg) => arg.startsWith('--log-format='))?.slice('--log-format='.length);
  return given ?? process.env.LOG_FORMAT ?? (process.stderr.isTTY ? 'pretty' : 'json');
}

const format = logFormat();
// The producer's worker thread has no terminal and no arguments of its own: it inherits the choice.
if (isMainThread) process.env.LOG_FORMAT = format;

const stream =
  format === 'pretty'
    ? // Loaded only for people reading a terminal: services and tests never pay for it.
      (await import('pino-pretty')).default({
        destination: 2,
        sync: true,
        colorize: process.stderr.isTTY,
        translateTime: 'SYS:HH:MM:ss.l',
        ignore: 'pid,hostname',
      })
    : // Synchronous on a worker thread (the producer's): its last lines must not be lost when it ends.
      pino.destination({ fd: 2, sync: !isMainThread });

export const log = pino(
  {
    level: process.env.LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ['*.password', '*.pgUrl', '*.redisUrl', 'pgUrl', 'redisUrl'], censor: '***' },
  },
  stream,
);

export type Logger = typeof log;
