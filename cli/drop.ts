import { connectPostgresOnce } from '../producer/preflight.js';
import { UserError } from '../shared/errors.js';
import { keys } from '../shared/keys.js';
import { readPipelineState } from '../shared/redis.js';
import { connectRedisOnce } from '../shared/redistarget.js';

/**
 * Removes a pipeline: its replication slot and every Redis key of it (state, queues, chunks,
 * marks). The publication and what the destinations hold stay. Refused while its producer runs.
 */
export async function dropPipeline(options: { pipeline: string; redisUrl: string; pgUrl: string; yes?: boolean }): Promise<string> {
  const redis = await connectRedisOnce(options.redisUrl);
  try {
    const state = await readPipelineState(redis, options.pipeline);
    if (!state) throw new UserError(`Redis has no pipeline "${options.pipeline}". Check --pipeline and --redis-url.`);
    if (!options.yes) {
      throw new UserError(
        `This removes replication slot ${state.slot} and every Redis key of pipeline ${options.pipeline} (the publication and the destinations' data stay). Run it again with --yes to do it.`,
      );
    }
    const lease = await redis.get(keys.producerLease(options.pipeline));
    if (lease) {
      const { host, pid } = JSON.parse(lease) as { host: string; pid: number };
      throw new UserError(
        `The producer of pipeline ${options.pipeline} is running (pid ${pid} on host ${host}; the lease of one that died expires within 10 s): stop it first, then drop the pipeline.`,
      );
    }
    const client = await connectPostgresOnce(options.pgUrl, 'pg-replicate pipeline drop');
    let slot: string;
    try {
      const found = (await client.query('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [state.slot])).rows[0];
      if (found?.active) throw new UserError(`Replication slot ${state.slot} is in use: stop the pipeline's producer first, then drop the pipeline.`);
      if (found) await client.query('SELECT pg_drop_replication_slot($1)', [state.slot]);
      slot = found ? `dropped replication slot ${state.slot}` : `replication slot ${state.slot} did not exist`;
    } finally {
      await client.end();
    }
    // The pipeline's own keys, and its queues' (BullMQ names them pgr:{pipeline.destination.partition}:…).
    let removed = 0;
    for (const pattern of [`pgr:{${options.pipeline}}:*`, `pgr:{${options.pipeline}.*`]) {
      let cursor = '0';
      do {
        const [next, found] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
        cursor = next;
        if (found.length > 0) removed += await redis.del(...found);
      } while (cursor !== '0');
    }
    return `pipeline ${options.pipeline}: ${slot}, removed ${removed} Redis keys`;
  } finally {
    redis.disconnect();
  }
}
