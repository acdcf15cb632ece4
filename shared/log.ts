import { isMainThread, parentPort } from 'node:worker_threads';
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

const prettyOptions = { colorize: process.stderr.isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' };

/**
 * The producer's thread hands each JSON line to the main thread (producer/thread.ts), which
 * writes it as its own (above the progress, on a terminal that shows it). Posted on the port
 * that later carries the thread's end: no line is lost when the thread is ended.
 */
const toParent = !isMainThread;

const stream = toParent
  ? { write: (line: string) => parentPort!.postMessage({ log: line }) }
  : format === 'pretty'
    ? // Loaded only for people reading a terminal: services and tests never pay for it.
      (await import('pino-pretty')).default({ ...prettyOptions, destination: 2, sync: true })
    : pino.destination({ fd: 2, sync: false });

/** Takes every log line instead of stderr while set (a terminal view that writes lines above itself). */
let sink: ((line: string) => void) | undefined;

export const log = pino(
  {
    level: process.env.LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ['*.password', '*.pgUrl', '*.redisUrl', 'pgUrl', 'redisUrl'], censor: '***' },
  },
  { write: (line: string) => (sink ? sink(line) : stream.write(line)) },
);

export type Logger = typeof log;

/**
 * Hands every log line of this thread, and those `writeLogLine` is given, to `take` as the text
 * to print (readable on a terminal, JSON otherwise), until the returned function is called.
 */
export async function takeLogLines(take: (text: string) => void): Promise<() => void> {
  const prettify = format === 'pretty' ? (await import('pino-pretty')).prettyFactory(prettyOptions) : (line: string) => line;
  sink = (line) => take(prettify(line));
  return () => {
    sink = undefined;
  };
}

/** Writes a JSON log line of another thread (the producer's) as this thread writes its own. */
export function writeLogLine(line: string): void {
  if (sink) sink(line);
  else stream.write(line);
}
