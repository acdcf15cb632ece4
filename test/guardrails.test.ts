import test from 'ava';
import { LOAD_SCHEMA, TestPipeline, loadTablesIn, runCli, writeLoad } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

const slotExists = async (slot: string) => (await env.pg.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [slot])).rowCount === 1;

test('one producer per pipeline: a second one (even with another slot) exits 2 naming the first, creating no slot; one killed is replaced at once on the same host', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'lease', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'lease'));
  let producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    const otherSlot = `${pipeline.slot}_other`;
    const started = Date.now();
    const second = await runCli(pipeline.producerArgs().map((arg) => (arg === pipeline.slot ? otherSlot : arg)));
    t.is(second.code, 2, second.stderr);
    t.log(`refused in ${Date.now() - started} ms`);
    t.regex(second.stderr, new RegExp(`Another producer is running pipeline ${pipeline.pipeline}: pid ${producer.child.pid} on host \\S+ \\(since [^)]+\\)\\. A pipeline has one producer`));
    t.false(await slotExists(otherSlot), 'the second producer created no slot');
    t.is(producer.child.exitCode, null, 'the first producer runs on');

    // Killed, its lease stays behind; on the same host its pid is gone, so the next takes over at once.
    await producer.kill9();
    producer = pipeline.producer();
    await writeLoad(env.pg, 50, 0, 'lease');
    await pipeline.waitForCatchUp({ stallMs: 8_000 });
    t.regex(producer.stderr, /taking over the lease of a producer on this host that is gone/);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.is(await env.redis.client.exists(`pgr:{${pipeline.pipeline}}:producer`), 0, 'a producer that stops releases its lease');
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'), 'lease');
  t.deepEqual(duckdb, postgres);
});

test('a lease left by a producer on another host that stopped renewing it is taken once it expires', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'stalelease', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'stalelease'));
  await env.redis.client.set(`pgr:{${pipeline.pipeline}}:producer`, JSON.stringify({ token: 'gone', host: 'elsewhere', pid: 1, since: new Date().toISOString(), renewed: Date.now() }), 'PX', 20_000);
  const started = Date.now();
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    t.true(Date.now() - started >= 19_000, 'it waited for the lease to expire');
    t.regex(producer.stderr, /producer lease is held: waiting to see whether its producer is alive/);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
});
