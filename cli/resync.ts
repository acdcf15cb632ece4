import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { connectPostgresOnce } from '../producer/preflight.js';
import { UserError } from '../shared/errors.js';
import { keys } from '../shared/keys.js';
import { readPipelineState, writePipelineState } from '../shared/redis.js';
import { connectRedisOnce } from '../shared/redistarget.js';
import { encodeRequest, type Request } from '../shared/requests.js';

/**
 * Sends a request to the producer and waits (up to 30 s) until the pipeline's state shows it
 * carried out: whether it was, once `done` holds.
 */
async function requestAndWait(redis: Redis, pipeline: string, request: Request, done: (destinations: string[]) => boolean): Promise<boolean> {
  await redis.rpush(keys.requests(pipeline), encodeRequest(request));
  for (const until = Date.now() + 30_000; Date.now() < until; ) {
    if (done((await readPipelineState(redis, pipeline))?.destinations ?? [])) return true;
    await sleep(200);
  }
  return false;
}

/** Asks the producer to stop feeding a destination, and waits (up to 30 s) until it has. */
export async function removeDestination(options: { pipeline: string; redisUrl: string; name: string }): Promise<string> {
  const redis = await connectRedisOnce(options.redisUrl);
  try {
    const state = await readPipelineState(redis, options.pipeline);
    if (!state) throw new UserError(`Redis has no pipeline "${options.pipeline}". Check --pipeline and --redis-url.`);
    if (!state.destinations.includes(options.name))
      throw new UserError(`Pipeline ${options.pipeline} has no destination "${options.name}" (it has: ${state.destinations.join(', ') || 'none'}).`);
    const removed = await requestAndWait(redis, options.pipeline, { removeDestination: options.name }, (destinations) => !destinations.includes(options.name));
    return removed
      ? `destination ${options.name} removed`
      : `removal of ${options.name} requested: the producer applies it when it runs (it is not running now)`;
  } finally {
    redis.disconnect();
  }
}

/** Asks the producer to add a destination, and waits (up to 30 s) until it has. */
export async function addDestination(options: { pipeline: string; redisUrl: string; name: string }): Promise<string> {
  const redis = await connectRedisOnce(options.redisUrl);
  try {
    const state = await readPipelineState(redis, options.pipeline);
    if (!state) throw new UserError(`Redis has no pipeline "${options.pipeline}". Check --pipeline and --redis-url, or start its producer first.`);
    if (state.destinations.includes(options.name)) return `pipeline ${options.pipeline} already has destination ${options.name}`;
    const added = await requestAndWait(redis, options.pipeline, { addDestination: options.name }, (destinations) => destinations.includes(options.name));
    return added
      ? `destination ${options.name} added: start its consumer with --name ${options.name}`
      : `adding ${options.name} requested: the producer adds it when it runs (it is not running now, or a copy is in progress)`;
  } finally {
    redis.disconnect();
  }
}

/** Asks the pipeline's producer to copy a table again beside the stream; returns what to tell the user. */
export async function requestResync(options: { pipeline: string; redisUrl: string; pgUrl: string; table: string; destination?: string }): Promise<string> {
  const redis = await connectRedisOnce(options.redisUrl);
  const client = await connectPostgresOnce(options.pgUrl, 'pg-replicate resync');
  try {
    const state = await readPipelineState(redis, options.pipeline);
    if (!state) throw new UserError(`Redis has no pipeline "${options.pipeline}". Check --pipeline and --redis-url, or start its producer first.`);
    if (options.destination && !state.destinations.includes(options.destination)) {
      throw new UserError(`Pipeline ${options.pipeline} has no destination "${options.destination}" (it has: ${state.destinations.join(', ')}).`);
    }
    const found = await client.query(
      `SELECT c.oid FROM pg_publication_tables p
         JOIN pg_namespace n ON n.nspname = p.schemaname
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
        WHERE p.pubname = $1 AND c.oid = to_regclass($2)`,
      [state.publication, options.table],
    );
    if (found.rowCount === 0)
      throw new UserError(`Table ${options.table} is not in publication ${state.publication}. Give it as schema.name, e.g. --table public.orders.`);
    const request = { tableOid: Number(found.rows[0].oid), ...(options.destination ? { destinations: [options.destination] } : {}) };
    await redis.rpush(keys.requests(options.pipeline), encodeRequest(request));
    return `resync of ${options.table} requested${options.destination ? ` for ${options.destination}` : ''}: the producer copies it beside the stream (watch its log, or status)`;
  } finally {
    await client.end();
    redis.disconnect();
  }
}

/**
 * Asks for every table to be copied again for every destination under a new slot: the way back
 * after the slot was lost or invalidated. The producer does it at its next start, or at once if
 * it runs.
 */
export async function requestRecopy(options: { pipeline: string; redisUrl: string }): Promise<string> {
  const redis = await connectRedisOnce(options.redisUrl);
  try {
    const state = await readPipelineState(redis, options.pipeline);
    if (!state) throw new UserError(`Redis has no pipeline "${options.pipeline}". Check --pipeline and --redis-url.`);
    await writePipelineState(redis, options.pipeline, { copy: 'requested' });
    return `every table of pipeline ${options.pipeline} will be copied again for every destination under a new slot (${state.slot}): at the producer's next start, or at once if it runs`;
  } finally {
    redis.disconnect();
  }
}
