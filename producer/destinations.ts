import type { Redis } from 'ioredis';
import { formatApplied, keys } from '../shared/keys.js';
import { log } from '../shared/log.js';
import { writePipelineState } from '../shared/redis.js';
import { detachedDestinations } from './metrics.js';
import type { Session } from './session.js';

/**
 * How a running session adds and removes destinations (on a consumer's registration, or
 * `destinations remove`, or the lag guard detaching one); `recorded` hears the destinations
 * once the pipeline state holds them.
 */
export function destinationChanges({ options, epoch, sequencer, queues }: Session, redis: Redis, recorded: (destinations: string[]) => void) {
  const record = async () => {
    recorded(queues.destinations);
    await writePipelineState(redis, options.pipeline, { destinations: queues.destinations });
  };
  return {
    /** Called once its copies are recorded: from now on a restarted producer feeds it and continues them. */
    add: async (name: string): Promise<void> => {
      // Nothing enqueued before now concerns it: its marks start at the current batch numbers.
      const startAt = Array.from({ length: options.partitions }, (_, partition) => sequencer.lastOf(partition));
      await queues.addDestination(name, startAt);
      const marks: Record<string, string> = {};
      for (let partition = 0; partition < options.partitions; partition++) marks[partition] = formatApplied(epoch, startAt[partition]);
      await redis.del(keys.applied(options.pipeline, name), keys.health(options.pipeline, name));
      await redis.hset(keys.applied(options.pipeline, name), marks);
      await redis.hdel(keys.state(options.pipeline), `detached:${name}`);
      detachedDestinations.delete(name);
      await record();
      log.info({ destination: name }, 'destination added: it gets its own copy of every table, then the stream');
    },
    remove: async (name: string, detached?: string): Promise<void> => {
      await queues.removeDestination(name);
      await redis.del(
        keys.applied(options.pipeline, name),
        keys.health(options.pipeline, name),
        keys.tableStates(options.pipeline, name),
        keys.places(options.pipeline, name),
        keys.quarantined(options.pipeline, name),
      );
      if (detached) {
        await redis.hset(keys.state(options.pipeline), `detached:${name}`, JSON.stringify({ reason: detached, since: new Date().toISOString() }));
        detachedDestinations.add(name);
      }
      await record();
      if (!detached) log.info({ destination: name }, 'destination removed: its queues are dropped and it no longer holds back the slot');
    },
  };
}
