import { createHash, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors, jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import type { Redis } from 'ioredis';
import { pipelineStatus } from '../cli/status.js';
import type { DestinationPlugin } from '../consumers/plugin.js';
import { errorMessage, UserError } from '../shared/errors.js';
import { log } from '../shared/log.js';
import { connectRedis } from '../shared/redis.js';
import { History } from './history.js';
import { QueueBoard } from './queues.js';
import { ApiError, apiRoutes } from './routes.js';
import { servePage } from './static.js';
import { Supervisor } from './supervisor.js';

export interface ServeOptions {
  redisUrl: string;
  /** For the slot's figures and resyncs of pipelines this server does not run. */
  pgUrl?: string;
  host: string;
  port: number;
  token?: string;
  /** Serve off loopback without a token: the network in front is trusted (a container whose port is published on the host's loopback). */
  trustNetwork: boolean;
  queuesAdmin: boolean;
  sampleMs: number;
  plugins: DestinationPlugin[];
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

/** What the API, the page and the queue board share. */
export interface ServeContext {
  options: ServeOptions;
  redis: Redis;
  supervisor: Supervisor;
  history: History;
  /** The Postgres URL for a pipeline's slot: its own configuration's, else the server's. */
  pgUrlOf(id: string): string | undefined;
  /** Every pipeline: those this server runs and those Redis holds a record of. */
  pipelineIds(): Promise<string[]>;
}

/** `pg-replicate serve`: the control API, the status page and the queue board on one port. */
export async function startServer(options: ServeOptions): Promise<{ url: string; close(): Promise<void> }> {
  if (!LOOPBACK.has(options.host) && !options.token && !options.trustNetwork) {
    throw new UserError(
      `serve --host ${options.host} is reachable from other machines: give a bearer token with --token or PGR_API_TOKEN, or serve on 127.0.0.1 (in a container whose port is published only on the host's loopback, --trust-network).`,
    );
  }
  // An HTTP request is answered while Redis is down (503), never held until it returns.
  const redis = connectRedis(options.redisUrl, { failFast: true });
  redis.on('error', (error) => log.debug({ err: errorMessage(error) }, 'redis connection error'));
  // Failing fast, the client refuses commands until it is connected: give it a moment first.
  await Promise.race([once(redis, 'ready'), sleep(3_000)]);
  const supervisor = new Supervisor(redis, options.plugins);
  const context: ServeContext = {
    options,
    redis,
    supervisor,
    history: new History(),
    pgUrlOf: (id) => supervisor.config(id)?.pgUrl ?? options.pgUrl,
    pipelineIds: async () => [...new Set([...supervisor.ids, ...(await pipelinesInRedis(redis))])].sort(),
  };
  const app = Fastify({ logger: false });
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler((error, _request, reply) => {
    if (hasZodFastifySchemaValidationErrors(error)) {
      return reply
        .code(400)
        .send({ error: `the request is not valid: ${error.validation.map((issue) => `${issue.instancePath || 'body'} ${issue.message}`).join('; ')}` });
    }
    if (error instanceof ApiError) return reply.code(error.statusCode).send({ error: errorMessage(error) });
    if (isRedisUnreachable(error))
      return reply.code(503).send({ error: `Redis is unreachable (${errorMessage(error)}): the pipelines wait for it; try again` });
    if (error instanceof UserError) return reply.code(400).send({ error: errorMessage(error) });
    const status = (error as { statusCode?: number }).statusCode;
    if (status && status < 500) return reply.code(status).send({ error: errorMessage(error) });
    log.error({ err: errorMessage(error) }, 'API request failed');
    return reply.code(500).send({ error: errorMessage(error) });
  });
  app.setNotFoundHandler((request, reply) => reply.code(404).send({ error: `no route ${request.method} ${request.url.split('?')[0]}: see /openapi.json` }));
  if (options.token) app.addHook('onRequest', requireToken(options.token));
  await app.register(swagger, {
    openapi: {
      info: { title: 'pg-replicate', version: '1', description: 'Manage and watch pg-replicate pipelines.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      ...(options.token ? { security: [{ bearer: [] }] } : {}),
    },
    transform: jsonSchemaTransform,
  });
  await app.register(apiRoutes(context), { prefix: '/api' });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  const board = new QueueBoard(redis, options.queuesAdmin);
  await app.register(board.plugin(), { prefix: '/queues' });
  servePage(app);

  await app.listen({ host: options.host, port: options.port });
  // Listening first: with Redis down, the page and the API say so while the pipelines wait for it.
  let closing = false;
  void resumeWhenRedisAnswers(supervisor, () => closing);
  const sampler = startSampler(context, board);
  const { address, family, port } = app.server.address() as AddressInfo;
  const url = `http://${family === 'IPv6' ? `[${address}]` : address}:${port}/`;
  log.info({ url }, 'serving the API and the status page');
  return {
    url,
    close: async () => {
      closing = true;
      sampler.stop();
      await app.close();
      await supervisor.close();
      await board.close();
      redis.disconnect();
    },
  };
}

/**
 * The token, as `Authorization: Bearer …` (the API) or the `pgr_token` cookie the status page
 * sets (the page's own requests and the queue board), compared in constant time. The page
 * itself and its scripts hold no data and load without it.
 */
function requireToken(token: string) {
  const expected = createHash('sha256').update(token).digest();
  const open = new Set(['/', '/page.js', '/uplot.js', '/uplot.css']);
  return async (request: FastifyRequest) => {
    if (open.has(request.url.split('?')[0])) return;
    const header = request.headers.authorization;
    const given = header?.startsWith('Bearer ') ? header.slice('Bearer '.length) : cookie(request.headers.cookie, 'pgr_token');
    if (given === undefined || !timingSafeEqual(createHash('sha256').update(given).digest(), expected)) {
      throw new ApiError(401, 'a valid bearer token is required (Authorization: Bearer <token>)');
    }
  };
}

function cookie(header: string | undefined, name: string): string | undefined {
  for (const part of header?.split(';') ?? []) {
    const [key, ...value] = part.trim().split('=');
    if (key === name) return decodeURIComponent(value.join('='));
  }
  return undefined;
}

/** ioredis refusing a command while it has no connection (failFast), or Redis unreachable for a one-off connection. */
function isRedisUnreachable(error: unknown): boolean {
  const message = error instanceof Error ? error.message : '';
  return /Stream isn't writeable|enableOfflineQueue|Connection is closed|Cannot reach Redis|Reached the max retries/.test(message);
}

/** Pipeline ids of which Redis holds a state record (`pgr:{id}:state`). */
async function pipelinesInRedis(redis: Redis): Promise<string[]> {
  const ids: string[] = [];
  let cursor = '0';
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', 'pgr:{*}:state', 'COUNT', 1000);
    cursor = next;
    for (const key of found) ids.push(key.slice('pgr:{'.length, -'}:state'.length));
  } while (cursor !== '0');
  return ids;
}

/** Starts the pipelines this server ran, once Redis answers (it may be starting too). */
async function resumeWhenRedisAnswers(supervisor: Supervisor, closing: () => boolean): Promise<void> {
  for (let attempt = 1; !closing(); attempt++) {
    try {
      await supervisor.resume();
      return;
    } catch (error) {
      if (attempt === 1) log.warn({ err: errorMessage(error) }, 'cannot read the pipelines this server ran from Redis yet: trying again every 2 s');
      await sleep(2_000);
    }
  }
}

/** Samples every pipeline's status for the page's plots, and keeps the queue board's queues current. */
function startSampler(context: ServeContext, board: QueueBoard): { stop(): void } {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const tick = async () => {
    try {
      const ids = await context.pipelineIds();
      const states = [];
      for (const id of ids) {
        const pgUrl = context.pgUrlOf(id);
        const status = await pipelineStatus({ pipeline: id, redisUrl: context.options.redisUrl, ...(pgUrl ? { pgUrl } : {}) }).catch(() => undefined);
        if (!status) continue;
        context.history.add(status);
        states.push(status);
      }
      await board.show(states);
    } catch (error) {
      log.debug({ err: errorMessage(error) }, 'status sample failed');
    }
    if (!stopped) timer = setTimeout(tick, context.options.sampleMs);
  };
  void tick();
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
