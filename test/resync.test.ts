import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { LOAD_SCHEMA, loadTablesIn, runCli, TestPipeline, waitFor, writeLoad } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

test('resync recopies one table consistently while everything streams under a write load', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'resync', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication));
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async ({ producer }) => {
    const load = writeLoad(env.pg, 1500, 2);
    await sleep(500);
    // A rewrite with USING changes every row without streaming anything: DuckDB now disagrees.
    await env.pg.query('ALTER TABLE accounts ALTER COLUMN note TYPE varchar(100) USING upper(note)');
    await sleep(300);
    const requested = await pipeline.resync('public.accounts');
    t.is(requested.code, 0, requested.stderr);
    t.regex(requested.stdout, /resync of public.accounts requested/);
    await waitFor('the resync to be enqueued', async () => producer.stderr.includes('table sync: copy enqueued'));
    await load;
    await pipeline.waitForCatchUp();
  });
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'));
  t.deepEqual(duckdb, postgres);
  t.true(
    postgres.accounts.some((row) => row.includes('SEED')),
    'the rewrite really changed rows that only the resync brings over',
  );
});

test('control requests that do not parse, or name a table not published, are moved aside with the reason, and the pipeline goes on', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'badrequest', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'badrequest'));
  const requests = `pgr:{${pipeline.pipeline}}:requests`;
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
    const oidOfSystemTable = (await env.pg.query("SELECT 'pg_class'::regclass::oid::int AS oid")).rows[0].oid;
    await env.redis.client.rpush(
      requests,
      '{not json',
      JSON.stringify({ dropEverything: true }),
      JSON.stringify({ tableOid: oidOfSystemTable }),
      JSON.stringify({ addDestination: '../x' }),
    );
    await writeLoad(env.pg, 100, 0, 'badrequest');
    await waitFor('the requests to be handled', async () => (await env.redis.client.llen(requests)) === 0);
    await pipeline.waitForCatchUp();
    const status = (await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout;
    t.regex(status, /control request refused at \S+: not JSON \(\{not json\)/);
    t.regex(status, /control request refused at \S+: not a request: expected .* \(\{"dropEverything":true\}\)/);
    t.regex(status, new RegExp(`control request refused at \\S+: table OID ${oidOfSystemTable} is not in publication ${pipeline.publication}`));
    t.regex(status, /control request refused at \S+: not a request: .* \(\{"addDestination":"\.\.\/x"\}\)/);
    t.regex(status, /destination main: ok/);
  });
  t.notRegex(producer.stderr, /session ended/, 'the producer never restarted');
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'), 'badrequest');
  t.deepEqual(duckdb, postgres);
});
