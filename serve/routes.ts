import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { dropPipeline } from '../cli/drop.js';
import { addDestination, removeDestination, requestResync } from '../cli/resync.js';
import { parseRunConfig, type RunFile } from '../cli/runfile.js';
import { pipelineStatus } from '../cli/status.js';
import { redact, UserError } from '../shared/errors.js';
import { keys } from '../shared/keys.js';
import { readPipelineState } from '../shared/redis.js';
import type { ServeContext } from './server.js';

/** An error with its HTTP status: 404 for what does not exist, 409 for what conflicts with the pipeline's state. */
export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
  ) {
    super(message);
  }
}

const error = z.object({ error: z.string() });
const message = z.object({ message: z.string() });
const params = z.object({ id: z.string().min(1) });
const served = z.object({ state: z.enum(['starting', 'running', 'failed']), error: z.string().optional(), since: z.string() });
const summary = z.object({ id: z.string(), served: z.boolean(), run: served.optional() });
/** The pipeline's status as `status --json` gives it (see PipelineStatus): described by its main fields, all of it returned. */
const statusView = z.looseObject({
  pipeline: z.string(),
  slot: z.string(),
  paused: z.boolean(),
  slotLagBytes: z.number().nullable().optional(),
  slotLagSeconds: z.number().nullable().optional(),
  destinations: z.array(z.looseObject({ name: z.string(), state: z.string(), appliedLsn: z.string().nullable(), consumers: z.number() })),
  copyProgress: z.array(z.looseObject({ table: z.string(), appliedRows: z.number() })),
});
const point = z.object({
  t: z.number(),
  lagBytes: z.number().nullable(),
  lagSeconds: z.number().nullable(),
  destinations: z.record(z.string(), z.object({ changesPerSecond: z.number(), rowsPerSecond: z.number() })),
});
const destinationBody = z.looseObject({ name: z.string().min(1), type: z.string().optional() });

/** The JSON API under /api; every answer is JSON, errors as { error }. */
export function apiRoutes(context: ServeContext): FastifyPluginAsyncZod {
  const { supervisor, options, redis } = context;

  /** The pipeline must exist: run by this server, or recorded in Redis. */
  const mustExist = async (id: string) => {
    if (!supervisor.config(id) && !(await readPipelineState(redis, id))) throw new ApiError(404, `no pipeline "${id}"`);
  };
  const pgUrlFor = (id: string, what: string) => {
    const url = context.pgUrlOf(id);
    if (!url) throw new ApiError(400, `${what} needs Postgres: pipeline ${id} is not run by this server, so start serve with --pg-url`);
    return url;
  };

  return async (app) => {
    app.get(
      '/pipelines',
      { schema: { summary: 'Every pipeline: those this server runs and those Redis holds', response: { 200: z.object({ pipelines: z.array(summary) }) } } },
      async () => ({
        pipelines: (await context.pipelineIds()).map((id) => {
          const run = supervisor.status(id);
          return { id, served: run !== undefined, ...(run ? { run } : {}) };
        }),
      }),
    );

    app.post(
      '/pipelines',
      {
        schema: {
          summary: 'Create a pipeline from the same document as `run --config` (JSON); this server runs it, and resumes it when it restarts',
          body: z.record(z.string(), z.unknown()),
          response: { 201: summary, 400: error, 409: error },
        },
      },
      async (request, reply) => {
        const config = parseRunConfig(request.body, options.plugins, 'the pipeline');
        if (supervisor.config(config.pipeline) || (await readPipelineState(redis, config.pipeline))) {
          throw new ApiError(409, `pipeline ${config.pipeline} exists already: pick another id, or delete it first`);
        }
        await supervisor.create(config);
        return reply.code(201).send({ id: config.pipeline, served: true, run: supervisor.status(config.pipeline) });
      },
    );

    app.get(
      '/pipelines/:id',
      {
        schema: {
          summary: "A pipeline's full status: slot, lag, destinations, partitions' errors, copies",
          params,
          response: {
            200: z.object({ id: z.string(), served: z.boolean(), run: served.optional(), config: z.unknown().optional(), status: statusView.nullable() }),
            404: error,
          },
        },
      },
      async (request) => {
        const { id } = request.params;
        await mustExist(id);
        const pgUrl = context.pgUrlOf(id);
        const config = supervisor.config(id);
        // A pipeline just created has no record in Redis until its producer starts.
        const status = await pipelineStatus({ pipeline: id, redisUrl: options.redisUrl, ...(pgUrl ? { pgUrl } : {}) }).catch((failure) => {
          if (config && failure instanceof UserError) return null;
          throw failure;
        });
        const run = supervisor.status(id);
        return {
          id,
          served: run !== undefined,
          ...(run ? { run } : {}),
          ...(config ? { config: redactConfig(config) } : {}),
          status: status as z.infer<typeof statusView> | null,
        };
      },
    );

    app.get(
      '/pipelines/:id/history',
      {
        schema: {
          summary: 'The last hour of lag and throughput, and the newest status, as sampled by this server (every --sample-seconds): what the status page shows',
          params,
          response: { 200: z.object({ points: z.array(point), sampled: statusView.nullable() }), 404: error },
        },
      },
      async (request) => {
        const { id } = request.params;
        await mustExist(id);
        return { points: context.history.of(id), sampled: (context.history.latestOf(id) as z.infer<typeof statusView> | undefined) ?? null };
      },
    );

    app.delete(
      '/pipelines/:id',
      {
        schema: {
          summary: 'Stop a pipeline and drop its replication slot and every Redis key of it (confirm=<id> required); the publication and the data stay',
          params,
          querystring: z.object({ confirm: z.string().optional() }),
          response: { 200: message, 400: error, 404: error, 409: error },
        },
      },
      async (request) => {
        const { id } = request.params;
        await mustExist(id);
        if (request.query.confirm !== id) {
          throw new ApiError(
            400,
            `deleting pipeline ${id} drops its replication slot and its queues and state in Redis: repeat the request with ?confirm=${id}`,
          );
        }
        const pgUrl = pgUrlFor(id, 'deleting a pipeline');
        if (!supervisor.config(id) && (await redis.exists(keys.producerLease(id)))) {
          throw new ApiError(409, `the producer of pipeline ${id} runs elsewhere: stop it first, then delete the pipeline`);
        }
        await supervisor.remove(id);
        context.history.forget(id);
        const dropped = (await readPipelineState(redis, id))
          ? await dropPipeline({ pipeline: id, redisUrl: options.redisUrl, pgUrl, yes: true })
          : `pipeline ${id} removed`;
        return { message: dropped };
      },
    );

    app.post(
      '/pipelines/:id/destinations',
      {
        schema: {
          summary:
            'Add a destination. For a pipeline this server runs: the same document as an entry of `destinations` in the run configuration (the server runs its consumer); otherwise { name } (start its consumer yourself)',
          params,
          body: destinationBody,
          response: { 200: message, 400: error, 404: error, 409: error },
        },
      },
      async (request) => {
        const { id } = request.params;
        await mustExist(id);
        const config = supervisor.config(id);
        if (!config) return { message: await addDestination({ pipeline: id, redisUrl: options.redisUrl, name: request.body.name }) };
        if (config.destinations.some((each) => each.name === request.body.name))
          throw new ApiError(409, `pipeline ${id} has a destination ${request.body.name} already`);
        // The whole configuration is checked again: the destination's options by its type's schema.
        const next = parseRunConfig({ ...config, destinations: [...config.destinations, request.body] }, options.plugins, 'the pipeline with this destination');
        // Restarted with it, the producer adds it and copies every table for it beside the stream.
        await supervisor.reconfigure(next);
        return { message: `destination ${request.body.name} added: its copy runs beside the stream, then it streams` };
      },
    );

    app.delete(
      '/pipelines/:id/destinations/:name',
      {
        schema: {
          summary: 'Stop feeding a destination: its queues are dropped and it no longer holds back the slot (its data stays where it is)',
          params: params.extend({ name: z.string().min(1) }),
          response: { 200: message, 400: error, 404: error },
        },
      },
      async (request) => {
        const { id, name } = request.params;
        await mustExist(id);
        const config = supervisor.config(id);
        if (config && !config.destinations.some((each) => each.name === name)) throw new ApiError(404, `pipeline ${id} has no destination ${name}`);
        if (config && config.destinations.length === 1)
          throw new ApiError(400, `${name} is the only destination of pipeline ${id}: delete the pipeline instead`);
        const removed = await removeDestination({ pipeline: id, redisUrl: options.redisUrl, name });
        if (config) await supervisor.reconfigure({ ...config, destinations: config.destinations.filter((each) => each.name !== name) } as RunFile);
        return { message: removed };
      },
    );

    app.post(
      '/pipelines/:id/resync',
      {
        schema: {
          summary: 'Copy one table again, consistently, beside the running stream (for every destination, or one)',
          params,
          body: z.object({ table: z.string().min(1), destination: z.string().min(1).optional() }),
          response: { 202: message, 400: error, 404: error },
        },
      },
      async (request, reply) => {
        const { id } = request.params;
        await mustExist(id);
        const pgUrl = pgUrlFor(id, 'a resync');
        const text = await requestResync({ pipeline: id, redisUrl: options.redisUrl, pgUrl, ...request.body });
        return reply.code(202).send({ message: text });
      },
    );

    app.post(
      '/pipelines/:id/restart',
      {
        schema: {
          summary: 'Start a pipeline this server runs again from its configuration (after it failed on something since fixed); it resumes from its slot',
          params,
          response: { 200: summary, 404: error },
        },
      },
      async (request) => {
        const { id } = request.params;
        if (!supervisor.config(id)) throw new ApiError(404, `pipeline ${id} is not run by this server`);
        await supervisor.restart(id);
        return { id, served: true, run: supervisor.status(id) };
      },
    );

    for (const action of ['pause', 'resume'] as const) {
      app.post(
        `/pipelines/:id/${action}`,
        {
          schema: {
            summary:
              action === 'pause'
                ? 'Pause reading the slot (copies too): nothing new is read, and Postgres holds the WAL until resumed'
                : 'Resume reading the slot',
            params,
            response: { 200: z.object({ paused: z.boolean() }), 404: error },
          },
        },
        async (request) => {
          const { id } = request.params;
          await mustExist(id);
          if (action === 'pause') await redis.hset(keys.state(id), 'paused', '1');
          else await redis.hdel(keys.state(id), 'paused');
          return { paused: action === 'pause' };
        },
      );
    }
  };
}

/** A configuration as the API shows it: URLs without passwords, secret-looking fields hidden. */
function redactConfig(value: unknown, key = ''): unknown {
  if (typeof value === 'string') return /password|secret|token|credentials/i.test(key) ? '***' : redact(value);
  if (Array.isArray(value)) return value.map((each) => redactConfig(each));
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([name, each]) => [name, redactConfig(each, name)]));
  return value;
}
