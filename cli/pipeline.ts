import { setTimeout as sleep } from 'node:timers/promises';
import { RUNNER_DEFAULTS } from '../consumers/options.js';
import type { DestinationPlugin } from '../consumers/plugin.js';
import { ConsumerRunner } from '../consumers/runner.js';
import { PRODUCER_DEFAULTS } from '../producer/options.js';
import { Producer } from '../producer/producer.js';
import { producerConfig, runnerConfig, validate } from '../shared/config.js';
import { connectRedis } from '../shared/redis.js';
import type { RunFile } from './runfile.js';

const STOP_WAIT_MS = 6_000;

/** A pipeline's producer and every destination's consumer, running in this process. */
export interface RunningPipeline {
  /** Settles when the pipeline ends: stopped, or failed (a UserError: what to fix). */
  done: Promise<void>;
  /** Stops reading and applying, and closes every connection. */
  stop(): Promise<void>;
}

/** Opens every destination of a run configuration and starts its producer and consumers (`run --config`, `serve`). */
export async function startPipeline(file: RunFile, plugins: DestinationPlugin[]): Promise<RunningPipeline> {
  const producer = new Producer(validate(producerConfig, { ...PRODUCER_DEFAULTS, ...file, destinations: file.destinations.map((each) => each.name) }));
  const redis = connectRedis(file.redisUrl);
  redis.on('error', () => {});
  const consumers: { opened: { close(): Promise<void> }; runner: ConsumerRunner }[] = [];
  const controller = new AbortController();
  const close = async () => {
    await producer.close();
    for (const { opened, runner } of consumers) {
      await runner.close();
      await opened.close();
    }
    redis.disconnect();
  };
  try {
    for (const { type, name, ...options } of file.destinations) {
      const plugin = plugins.find((each) => each.type === type)!;
      const opened = await plugin.open(options, { redis, pipeline: file.pipeline, name });
      // Every destination of the configuration belongs to the pipeline: one new to it registers (and gets its copy).
      const runner = new ConsumerRunner(
        validate(runnerConfig, { ...RUNNER_DEFAULTS, redisUrl: file.redisUrl, pipeline: file.pipeline, name, register: true }),
        opened,
      );
      consumers.push({ opened, runner });
    }
  } catch (error) {
    await close();
    throw error;
  }
  const done = Promise.all([producer.run(controller.signal), ...consumers.map(({ runner }) => runner.run(controller.signal))]).then(() => {});
  // One part failing stops the others: a pipeline runs whole or not at all.
  done.catch(() => controller.abort());
  let closing: Promise<void> | undefined;
  return {
    done,
    stop: () => {
      controller.abort();
      // A part that does not stop in time (a request that never returns) is closed under it.
      closing ??= Promise.race([done.catch(() => {}), sleep(STOP_WAIT_MS)]).then(close);
      return closing;
    },
  };
}
