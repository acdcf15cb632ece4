import { join } from 'node:path';
import test from 'ava';
import { CliProcess, duckdbRows, postgresRows, runCli, TestPipeline, waitFor } from './support/pipeline.js';
import { freePort, spawnRedis, useServices } from './support/services.js';

const env = useServices(test);

/** `pg-replicate serve` on a free port, once it listens. */
async function serve(args: string[] = [], extraEnv: Record<string, string> = {}) {
  const port = await freePort();
  const server = new CliProcess(['serve', '--port', String(port), '--redis-url', env.redis.url, '--sample-seconds', '1', ...args], extraEnv);
  await waitFor('the server to listen', async () => server.stderr.includes('serving the API'));
  const base = `http://127.0.0.1:${port}`;
  const call = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
    const response = await fetch(`${base}${path}`, {
      method,
      headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await response.text();
    const json = response.headers.get('content-type')?.startsWith('application/json') ? JSON.parse(text) : undefined;
    return { status: response.status, text, json };
  };
  return { server, base, port, call };
}

type Status = {
  paused: boolean;
  slotLagBytes: number;
  slotLagSeconds: number;
  destinations: { name: string; state: string; appliedChanges: number; consumers: number }[];
};

test.serial(
  'serve: a pipeline created over the API runs, pauses and resumes, takes and loses a destination, resumes when the server restarts, and is deleted with its slot; no answer holds a password',
  async (t) => {
    const pipeline = new TestPipeline(env.pg, env.redis.url, 'served', []);
    await env.pg.query(`CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 1000) g;
      CREATE PUBLICATION ${pipeline.publication} FOR TABLE items;`);
    // A password the server must never show (the test server trusts local connections and ignores it).
    const pgUrl = env.pg.url.replace('postgres@', 'postgres:hunter2-secret@');
    const path = join(pipeline.dir, 'served.duckdb');
    const config = {
      pipeline: pipeline.pipeline,
      pgUrl,
      redisUrl: env.redis.url,
      publication: pipeline.publication,
      slot: pipeline.slot,
      destinations: [{ type: 'duckdb', name: 'warehouse', path }],
    };
    // A pipeline the server does not run, found in Redis.
    const other = new TestPipeline(env.pg, env.redis.url, 'outside', ['main']);
    await env.pg.query(`CREATE PUBLICATION ${other.publication} FOR TABLE items`);
    const outsideProducer = other.producer();
    await waitFor('its record in Redis', async () => (await env.redis.client.exists(`pgr:{${other.pipeline}}:state`)) === 1);
    await outsideProducer.stop();

    let api = await serve();
    try {
      const openapi = await api.call('GET', '/openapi.json');
      t.is(openapi.status, 200);
      for (const route of [
        '/api/pipelines',
        '/api/pipelines/{id}',
        '/api/pipelines/{id}/pause',
        '/api/pipelines/{id}/resync',
        '/api/pipelines/{id}/destinations',
      ]) {
        t.truthy(openapi.json.paths[route], `the OpenAPI document describes ${route}`);
      }
      const invalid = await api.call('POST', '/api/pipelines', { ...config, partitons: 4, destinations: [] });
      t.is(invalid.status, 400);
      t.regex(invalid.json.error, /partitons: unknown key \(did you mean "partitions"\?\)/);
      t.regex(invalid.json.error, /destinations: at least one destination is needed/);
      t.is((await api.call('GET', '/api/pipelines/nothing-here')).status, 404);
      t.deepEqual(await api.call('GET', '/api/nowhere'), {
        status: 404,
        text: JSON.stringify({ error: 'no route GET /api/nowhere: see /openapi.json' }),
        json: { error: 'no route GET /api/nowhere: see /openapi.json' },
      });

      const created = await api.call('POST', '/api/pipelines', config);
      t.is(created.status, 201, created.text);
      t.is((await api.call('POST', '/api/pipelines', config)).status, 409, 'the same id twice is a conflict');
      await pipeline.waitForCopy(env.redis.client);
      const status = async () => (await api.call('GET', `/api/pipelines/${pipeline.pipeline}`)).json.status as Status;
      const applied = async () => (await status()).destinations.find((each) => each.name === 'warehouse')?.appliedChanges ?? 0;

      const list = (await api.call('GET', '/api/pipelines')).json.pipelines as { id: string; served: boolean }[];
      t.deepEqual(
        list.filter((each) => [pipeline.pipeline, other.pipeline].includes(each.id)).map(({ id, served }) => ({ id, served })),
        [
          { id: other.pipeline, served: false },
          { id: pipeline.pipeline, served: true },
        ].sort((a, b) => a.id.localeCompare(b.id)),
      );
      await env.pg.query("INSERT INTO items VALUES (1001, 'streamed')");
      await waitFor('the change to be applied', async () => (await applied()) === 1);
      const detail = await api.call('GET', `/api/pipelines/${pipeline.pipeline}`);
      t.false(detail.text.includes('hunter2-secret'), 'the configuration shown has no password');
      t.regex(detail.json.config.pgUrl, /postgres:\*\*\*@/);
      t.is(detail.json.run.state, 'running');
      t.is(typeof detail.json.status.slotLagBytes, 'number');
      t.is(typeof detail.json.status.slotLagSeconds, 'number');
      t.is(detail.json.status.destinations[0].consumers, 1);

      // Paused, nothing is read; resumed, the change arrives.
      t.deepEqual((await api.call('POST', `/api/pipelines/${pipeline.pipeline}/pause`)).json, { paused: true });
      await waitFor('the producer to pause', async () => api.server.stderr.includes('reading the slot paused by an operator'));
      await env.pg.query("INSERT INTO items VALUES (1002, 'while paused')");
      await new Promise((resolve) => setTimeout(resolve, 3000));
      t.is(await applied(), 1, 'nothing is applied while paused');
      t.true((await status()).paused);
      await api.call('POST', `/api/pipelines/${pipeline.pipeline}/resume`);
      await waitFor('the change made while paused to be applied', async () => (await applied()) === 2);

      // A destination added runs in the server, with a copy of its own; removed, it stops.
      const badDestination = await api.call('POST', `/api/pipelines/${pipeline.pipeline}/destinations`, { type: 'stdout', name: 'console', colour: 'red' });
      t.is(badDestination.status, 400);
      t.regex(badDestination.json.error, /colour: unknown key/);
      t.is((await api.call('POST', `/api/pipelines/${pipeline.pipeline}/destinations`, { type: 'stdout', name: 'console' })).status, 200);
      await waitFor('the new destination to be fed and consumed', async () =>
        (await status()).destinations.some((each) => each.name === 'console' && each.consumers === 1 && each.state === 'ok'),
      );
      await waitFor('its copy to be printed', async () => api.server.stdout.includes('"id":1000'));
      const removed = await api.call('DELETE', `/api/pipelines/${pipeline.pipeline}/destinations/console`);
      t.is(removed.status, 200, removed.text);
      t.deepEqual(
        (await status()).destinations.map((each) => each.name),
        ['warehouse'],
      );

      const resync = await api.call('POST', `/api/pipelines/${pipeline.pipeline}/resync`, { table: 'public.items' });
      t.is(resync.status, 202, resync.text);
      t.is((await api.call('POST', `/api/pipelines/${pipeline.pipeline}/resync`, { table: 'public.nope' })).status, 400);

      // A restarted server resumes the pipeline from Redis.
      await api.server.stop();
      api = await serve();
      await env.pg.query("INSERT INTO items VALUES (1003, 'after the restart')");
      await waitFor('the pipeline to run again and apply the change', async () => (await applied()) >= 3);
      t.is((await api.call('GET', `/api/pipelines/${pipeline.pipeline}`)).json.run.state, 'running');
      const history = await api.call('GET', `/api/pipelines/${pipeline.pipeline}/history`);
      t.true(history.json.points.length > 0);
      t.is(history.json.sampled.pipeline, pipeline.pipeline, 'the newest status sampled, for the page');

      const unconfirmed = await api.call('DELETE', `/api/pipelines/${pipeline.pipeline}`);
      t.is(unconfirmed.status, 400);
      t.regex(unconfirmed.json.error, /confirm=served/);
      const deleted = await api.call('DELETE', `/api/pipelines/${pipeline.pipeline}?confirm=${pipeline.pipeline}`);
      t.is(deleted.status, 200, deleted.text);
      t.regex(deleted.json.message, /dropped replication slot/);
      t.is((await env.pg.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [pipeline.slot])).rowCount, 0);
      t.deepEqual(await env.redis.client.keys(`pgr:{${pipeline.pipeline}}*`), []);
      t.is((await api.call('GET', `/api/pipelines/${pipeline.pipeline}`)).status, 404);
      t.false(api.server.stderr.includes('hunter2-secret'), 'the logs hold no password');
    } finally {
      await api.server.stop();
    }
    t.deepEqual(await duckdbRows(path, 'public.items', ['id', 'v']), await postgresRows(env.pg, 'items', ['id', 'v']));
  },
);

test.serial(
  'serve off loopback needs a token, checks it on every API request, and lets the page load without it; --queues-admin opens the queue board to changes',
  async (t) => {
    const refused = await runCli(['serve', '--host', '0.0.0.0', '--port', String(await freePort()), '--redis-url', env.redis.url]);
    t.is(refused.code, 2);
    t.regex(refused.stderr, /reachable from other machines: give a bearer token with --token or PGR_API_TOKEN/);
    const token = 'a-token-of-some-length';
    const api = await serve(['--host', '0.0.0.0', '--queues-admin'], { PGR_API_TOKEN: token });
    try {
      const anonymous = await api.call('GET', '/api/pipelines');
      t.is(anonymous.status, 401);
      t.regex(anonymous.json.error, /bearer token is required/);
      t.is((await api.call('GET', '/api/pipelines', undefined, { authorization: 'Bearer a-token-of-some-lengtH' })).status, 401);
      t.is((await api.call('GET', '/api/pipelines', undefined, { authorization: `Bearer ${token}` })).status, 200);
      t.is((await api.call('GET', '/queues/', undefined, { cookie: `pgr_token=${token}` })).status, 200, 'the queue board takes the page cookie');
      t.is((await api.call('GET', '/queues/')).status, 401);
      // The pipeline of the test before, found in Redis: its queues, open to changes.
      const board = await waitFor('the board to list the queues', async () => {
        const { json } = await api.call('GET', '/queues/api/queues', undefined, { cookie: `pgr_token=${token}` });
        return json.queues.length > 0 && (json.queues as { readOnlyMode: boolean }[]);
      });
      t.true(board.every((queue) => !queue.readOnlyMode));
      const page = await fetch(`${api.base}/`);
      t.is(page.status, 200);
      t.regex(await page.text(), /<title>pg-replicate<\/title>/);
    } finally {
      await api.server.stop();
    }
  },
);

test.serial('serve: a pipeline that fails on something to fix shows the error, and restarts once it is fixed', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'refixed', []);
  await env.pg.query('CREATE TABLE fixed (id int PRIMARY KEY); INSERT INTO fixed VALUES (1), (2)');
  const api = await serve();
  try {
    const created = await api.call('POST', '/api/pipelines', {
      pipeline: pipeline.pipeline,
      pgUrl: env.pg.url,
      redisUrl: env.redis.url,
      publication: pipeline.publication,
      slot: pipeline.slot,
      destinations: [{ type: 'duckdb', name: 'warehouse', path: join(pipeline.dir, 'fixed.duckdb') }],
    });
    t.is(created.status, 201, created.text);
    // Its publication does not exist yet: the producer refuses to start, with the fix.
    const failed = await waitFor('the pipeline to fail', async () => {
      const { json } = await api.call('GET', `/api/pipelines/${pipeline.pipeline}`);
      return json.run.state === 'failed' && json.run;
    });
    t.regex(failed.error, new RegExp(`Publication "${pipeline.publication}" does not exist in this database. Create it first`));
    t.is((await api.call('POST', '/api/pipelines/nothing-here/restart')).status, 404);
    await env.pg.query(`CREATE PUBLICATION ${pipeline.publication} FOR TABLE fixed`);
    const restarted = await api.call('POST', `/api/pipelines/${pipeline.pipeline}/restart`);
    t.is(restarted.status, 200, restarted.text);
    t.is(restarted.json.run.state, 'running');
    await pipeline.waitForCopy(env.redis.client);
    t.is((await api.call('GET', `/api/pipelines/${pipeline.pipeline}`)).json.status.destinations[0].appliedRows, 2);
  } finally {
    await api.server.stop();
  }
});

test.serial('serve answers 503 at once while its Redis is down, and serves again when it is back', async (t) => {
  const port = await freePort();
  let redis = await spawnRedis(port, []);
  const server = new CliProcess(['serve', '--port', String(await freePort()), '--redis-url', `redis://127.0.0.1:${port}`]);
  try {
    await waitFor('the server to listen', async () => server.stderr.includes('serving the API'));
    const url = JSON.parse(server.stderr.split('\n').find((line) => line.includes('serving the API'))!).url;
    t.is((await fetch(`${url}api/pipelines`)).status, 200);
    await redis.kill();
    const started = Date.now();
    const down = await fetch(`${url}api/pipelines`);
    t.is(down.status, 503);
    t.regex(((await down.json()) as { error: string }).error, /^Redis is unreachable/);
    t.true(Date.now() - started < 5_000, 'answered, not held until Redis returns');
    redis = await spawnRedis(port, []);
    await waitFor('the server to answer again', async () => (await fetch(`${url}api/pipelines`)).status === 200);
    t.pass();
  } finally {
    await server.stop();
    await redis.kill();
  }
});
