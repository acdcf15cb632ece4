import { parentPort, workerData } from 'node:worker_threads';
import { UserError, errorMessage } from '../shared/errors.js';
import { log } from '../shared/log.js';
import type { ProducerOptions } from './options.js';
import { Producer } from './producer.js';

/** The producer thread (producer/thread.ts): runs until the main thread says stop, reports a failure, ends. */
async function run(options: ProducerOptions): Promise<void> {
  const controller = new AbortController();
  parentPort!.on('message', (message) => {
    if (message === 'stop') controller.abort();
  });
  const producer = new Producer(options);
  try {
    await producer.run(controller.signal);
  } catch (error) {
    parentPort!.postMessage({ error: errorMessage(error), userError: error instanceof UserError });
  } finally {
    await producer.close();
    log.flush();
    parentPort!.close();
  }
}

await run(workerData.producerOptions);
