import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import { UserError } from '../shared/errors.js';
import { keys } from '../shared/keys.js';
import { log } from '../shared/log.js';
import { readPipelineState } from '../shared/redis.js';
import { encodeRequest } from '../shared/requests.js';

/** A consumer's heartbeat older than this is not alive (it is renewed every few seconds). */
export const CONSUMER_ALIVE_MS = 10_000;

/**
 * A consumer's place in its pipeline. A destination the pipeline does not know is added only
 * when asked for (`--register`, or `pg-replicate destinations add`): a mistyped `--name` would
 * otherwise get a full copy of every table and hold the slot. A known destination asks again
 * whenever a new producer run no longer lists it (Redis lost the pipeline's record), and one
 * detached for lagging asks for a fresh copy; one removed on purpose is not re-added. The
 * consumer also keeps a heartbeat, so that `status` shows destinations nobody consumes.
 */
export class Registration {
  private seenEpoch: number | undefined;
  /** This destination was in the pipeline, or was added by this consumer. */
  private known = false;
  private readonly member = `${hostname()}:${process.pid}`;

  constructor(
    private readonly redis: Redis,
    private readonly pipeline: string,
    private readonly name: string,
    private readonly register: boolean,
  ) {}

  /** Called every few seconds while the consumer runs. Throws when the destination is unknown and may not register. */
  async check(): Promise<void> {
    await this.beat();
    const state = await readPipelineState(this.redis, this.pipeline).catch(() => undefined);
    if (!state) return;
    const firstLook = this.seenEpoch === undefined;
    const newRun = this.seenEpoch !== state.epoch;
    this.seenEpoch = state.epoch;
    if (state.destinations.includes(this.name)) {
      this.known = true;
      return;
    }
    // Detached for lagging: it asks again (once) for a fresh copy, as a new destination does.
    const detached = await this.redis.hget(keys.state(this.pipeline), `detached:${this.name}`);
    if (!(firstLook || newRun || detached)) return;
    const request = encodeRequest({ addDestination: this.name });
    // Asked for already (by the producer's --destinations, or destinations add): on its way in.
    if ((await this.redis.lrange(keys.requests(this.pipeline), 0, -1)).includes(request)) {
      this.known = true;
      return;
    }
    // The producer may have just taken the request off the list, having recorded the destination.
    const added = !this.known && !detached && !this.register && (await readPipelineState(this.redis, this.pipeline))?.destinations.includes(this.name);
    if (added) {
      this.known = true;
      return;
    }
    if (!this.known && !detached && !this.register) {
      throw new UserError(
        `Pipeline ${this.pipeline} has no destination "${this.name}" (it has: ${state.destinations.join(', ') || 'none'}). Check --name; to add a new destination (it gets a copy of every table), start this consumer with --register or run pg-replicate destinations add ${this.name}.`,
      );
    }
    this.known = true;
    if (detached)
      log.warn(
        { destination: this.name, detached: JSON.parse(detached) },
        'this destination was detached by the producer: registering it again for a fresh copy of every table',
      );
    else log.info({ destination: this.name }, 'registering this destination with the producer');
    await this.redis.rpush(keys.requests(this.pipeline), request);
  }

  private async beat(): Promise<void> {
    const key = keys.consumers(this.pipeline, this.name);
    const now = Date.now();
    await this.redis
      .multi()
      .zadd(key, now, this.member)
      .zremrangebyscore(key, '-inf', now - 6 * CONSUMER_ALIVE_MS)
      .exec();
  }

  async leave(): Promise<void> {
    await this.redis.zrem(keys.consumers(this.pipeline, this.name), this.member).catch(() => {});
  }
}

/** How many consumers of the destination are alive now. */
export async function aliveConsumers(redis: Redis, pipeline: string, name: string): Promise<number> {
  return redis.zcount(keys.consumers(pipeline, name), Date.now() - CONSUMER_ALIVE_MS, '+inf');
}
