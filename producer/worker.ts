import { parentPort, workerData } from 'node:worker_threads';
import { UserError, errorMessage } from '../shared/errors.js';
import type { ProducerOptions } from './options.js';
import { Producer } from './producer.js';

/** The producer thread (producer/thread.ts): runs until the main thread says stop, then reports how it ended. */
async function run(options: ProducerOptions): Promise<void> {
  const controller = new AbortController();
  parentPort!.on('message', (message) => {
    if (message === 'stop') controller.abort();
  });
  const producer = new Producer(options);
  let outcome: { error?: string; userError?: boolean } = {};
  try {
    await producer.run(controller.signal);
  } catch (error) {
    outcome = { error: errorMessage(error), userError: error instanceof UserError };
  } finally {
    await producer.close();
  }
  // The main thread ends this thread when told: timers of closed clients may still be pending.
  parentPort!.postMessage({ done: true, ...outcome });
}

await run(workerData.producerOptions);
