import { parentPort } from 'node:worker_threads';
import { errorMessage, UserError } from '../shared/errors.js';
import { serveMetrics } from '../shared/metrics.js';
import type { ProducerOptions } from './options.js';
import { Producer } from './producer.js';

/** What the main thread sends: the options to start with (once), then perhaps a stop. */
type Message = { start: { producerOptions: ProducerOptions; metricsPort?: number } } | 'stop';

/**
 * The producer thread (producer/thread.ts): waits for its options (it may be started before
 * they are known), runs until the main thread says stop, then reports how it ended.
 */
async function run(): Promise<void> {
  const controller = new AbortController();
  const started = new Promise<{ producerOptions: ProducerOptions; metricsPort?: number }>((resolve) =>
    parentPort!.on('message', (message: Message) => {
      if (message === 'stop') controller.abort();
      else resolve(message.start);
    }),
  );
  const { producerOptions: options, metricsPort } = await started;
  const producer = new Producer(options);
  let outcome: { error?: string; userError?: boolean } = {};
  let stopMetrics: (() => Promise<void>) | undefined;
  try {
    if (metricsPort) stopMetrics = await serveMetrics(metricsPort);
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

await run();
