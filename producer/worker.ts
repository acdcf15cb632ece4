import { parentPort } from 'node:worker_threads';
import { errorMessage, UserError } from '../shared/errors.js';
import type { ProducerOptions } from './options.js';
import { Producer } from './producer.js';

/** The producer thread (producer/thread.ts): runs until the main thread says stop, then reports how it ended. */
async function run(options: ProducerOptions, metricsPort: number | undefined): Promise<void> {
  const controller = new AbortController();
  parentPort!.on('message', (message) => {
    if (message === 'stop') controller.abort();
  });
  const producer = new Producer(options);
  let outcome: { error?: string; userError?: boolean } = {};
  let stopMetrics: (() => Promise<void>) | undefined;
  try {
    if (metricsPort) {
      await import('./prometheus.js');
      stopMetrics = await (await import('../shared/metrics.js')).serveMetrics(metricsPort);
    }
    await producer.run(controller.signal);
  } catch (error) {
    outcome = { error: errorMessage(error), userError: error instanceof UserError };
  } finally {
    await stopMetrics?.();
    await producer.close();
  }
  // The main thread ends this thread when told: timers of closed clients may still be pending.
  parentPort!.postMessage({ done: true, ...outcome });
}

// Loaded before the command line is parsed (see thread.ts): the options come once it is.
const { start } = await new Promise<{ start: { producerOptions: ProducerOptions; metricsPort?: number } }>((resolve) => parentPort!.once('message', resolve));
await run(start.producerOptions, start.metricsPort);
