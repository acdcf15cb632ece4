import { Worker } from 'node:worker_threads';
import { UserError } from '../shared/errors.js';
import { PRODUCER_HEAP_MB, type ProducerOptions } from './options.js';

/** How the producer's thread ended: what it reported, or the error that ended it. */
type Ending = { error?: string; userError?: boolean } | { failure: Error };

/**
 * The producer's worker thread with a capped heap. What the producer holds is bounded by
 * design (about 25 MB live while streaming), but V8 lets an uncapped heap grow to several
 * times its live size before collecting, which is most of an uncapped producer's memory. A
 * worker thread is the one way to cap a heap from inside the process, whoever starts it
 * (`npx`, Docker, a service manager), without NODE_OPTIONS. Exceeding the cap ends the
 * producer with an error naming --heap-mb; it resumes from the slot when restarted. The young
 * generation gets an eighth of the cap (a quarter halved collection time but cost 20–30 MB).
 *
 * The thread loads its modules (a third of a second, most of the producer's start) as soon as
 * it exists and then waits for its options: started early (startEarly), that overlaps the
 * main thread loading and parsing the command line.
 */
class ProducerThread {
  readonly worker: Worker;
  /** Settles once the thread is gone; listened to from the start, so that nothing it says is missed. */
  readonly ended: Promise<Ending>;
  private logLines?: (line: string) => void;

  constructor(readonly heapMb: number) {
    this.worker = new Worker(new URL('./worker.js', import.meta.url), {
      resourceLimits: { maxOldGenerationSizeMb: heapMb, maxYoungGenerationSizeMb: Math.max(8, Math.round(heapMb / 8)) },
    });
    // Not waited for until it runs: a command line that turns out wrong exits without it.
    this.worker.unref();
    this.ended = new Promise((resolve) => {
      let ending: Ending | undefined;
      // The thread sends its log lines (shared/log.ts) and, once its clients are closed, how it
      // ended; it is then terminated (timers of closed clients may still be pending there).
      this.worker.on('message', (message: { log: string } | { done: true; error?: string; userError?: boolean }) => {
        if ('log' in message) return this.logLines?.(message.log);
        ending = message;
        void this.worker.terminate();
      });
      this.worker.on('error', (error: Error & { code?: string }) => {
        ending ??= {
          failure:
            error.code === 'ERR_WORKER_OUT_OF_MEMORY'
              ? new Error(`the producer needed more than its ${heapMb} MB heap; restart it with a larger --heap-mb (it resumes from the slot)`)
              : error,
        };
      });
      this.worker.on('exit', (code) => resolve(ending ?? (code === 0 ? {} : { failure: new Error(`the producer thread exited with code ${code}`) })));
    });
  }

  /** Runs the producer with these options until it ends or `signal` aborts; its log lines go to `logLines`. */
  async run(options: ProducerOptions, metricsPort: number | undefined, logLines: (line: string) => void, signal: AbortSignal): Promise<void> {
    this.logLines = logLines;
    this.worker.ref();
    this.worker.postMessage({ start: { producerOptions: options, metricsPort } });
    const stop = () => this.worker.postMessage('stop');
    signal.addEventListener('abort', stop);
    try {
      const ending = await this.ended;
      if ('failure' in ending) throw ending.failure;
      if (ending.error) throw ending.userError ? new UserError(ending.error) : new Error(ending.error);
    } finally {
      signal.removeEventListener('abort', stop);
    }
  }
}

/** The thread started by startEarly, until runProducerThread takes it. */
let early: ProducerThread | undefined;

/**
 * Starts the producer's thread before the command line is parsed, when `argv` is the producer
 * command's, with the heap it names (`--heap-mb`, PRODUCER_HEAP_MB or the default). A heap that
 * parsing then finds different, or invalid, gets a thread of its own.
 */
export function startEarly(argv: string[], env: NodeJS.ProcessEnv): void {
  const args = argv.slice(2);
  const command = args[0]?.startsWith('--log-format') ? args[args[0].includes('=') ? 1 : 2] : args[0];
  if (command !== 'producer') return;
  const at = args.findIndex((arg) => arg === '--heap-mb' || arg.startsWith('--heap-mb='));
  const given = at < 0 ? env.PRODUCER_HEAP_MB : args[at].includes('=') ? args[at].slice('--heap-mb='.length) : args[at + 1];
  const heapMb = given === undefined ? PRODUCER_HEAP_MB : Number(given);
  if (Number.isInteger(heapMb) && heapMb >= 48) early = new ProducerThread(heapMb);
}

/** Runs the producer on its thread (the one started early, if its heap is this one) until it ends or `signal` aborts. */
export async function runProducerThread(
  options: ProducerOptions,
  { heapMb, metricsPort, logLines }: { heapMb: number; metricsPort?: number; logLines: (line: string) => void },
  signal: AbortSignal,
): Promise<void> {
  const thread = early?.heapMb === heapMb ? early : new ProducerThread(heapMb);
  if (early && early !== thread) void early.worker.terminate();
  early = undefined;
  await thread.run(options, metricsPort, logLines, signal);
}
