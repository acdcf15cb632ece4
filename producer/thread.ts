import { Worker } from 'node:worker_threads';
import { UserError } from '../shared/errors.js';
import type { ProducerOptions } from './options.js';

/**
 * Runs the producer on a worker thread with a capped heap. What the producer holds is bounded
 * by design (about 25 MB live while streaming), but V8 lets an uncapped heap grow to several
 * times its live size before collecting, which is most of an uncapped producer's memory. A
 * worker thread is the one way to cap a heap from inside the process, whoever starts it
 * (`npx`, Docker, a service manager), without NODE_OPTIONS. Exceeding the cap ends the
 * producer with an error naming --heap-mb; it resumes from the slot when restarted. The young
 * generation gets an eighth of the cap (a quarter halved collection time but cost 20–30 MB).
 */
export async function runProducerThread(
  options: ProducerOptions,
  { heapMb, metricsPort, logLines }: { heapMb: number; metricsPort?: number; logLines?: (line: string) => void },
  signal: AbortSignal,
): Promise<void> {
  // The metrics are served from the thread: they live there.
  const worker = new Worker(new URL('./worker.js', import.meta.url), {
    workerData: { producerOptions: options, metricsPort },
    resourceLimits: { maxOldGenerationSizeMb: heapMb, maxYoungGenerationSizeMb: Math.max(8, Math.round(heapMb / 8)) },
    // With `logLines`, the thread sends its log lines here instead of writing them (shared/log.ts).
    ...(logLines ? { env: { ...process.env, PGR_LOG_TO_PARENT: '1' } } : {}),
  });
  const stop = () => worker.postMessage('stop');
  signal.addEventListener('abort', stop);
  let failure: Error | undefined;
  let reported = false;
  try {
    await new Promise<void>((resolve, reject) => {
      // The thread reports how it ended once its clients are closed, and is then terminated
      // (timers of closed clients may still be pending there).
      worker.on('message', (message: { log: string } | { done: true; error?: string; userError?: boolean }) => {
        if ('log' in message) return logLines?.(message.log);
        reported = true;
        if (message.error) failure = message.userError ? new UserError(message.error) : new Error(message.error);
        void worker.terminate();
      });
      worker.on('error', (error: Error & { code?: string }) => {
        failure ??=
          error.code === 'ERR_WORKER_OUT_OF_MEMORY'
            ? new Error(`the producer needed more than its ${heapMb} MB heap; restart it with a larger --heap-mb (it resumes from the slot)`)
            : error;
      });
      worker.on('exit', (code) =>
        failure ? reject(failure) : reported || code === 0 ? resolve() : reject(new Error(`the producer thread exited with code ${code}`)),
      );
    });
  } finally {
    signal.removeEventListener('abort', stop);
  }
}
