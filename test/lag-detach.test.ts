import test from 'ava';
import { LOAD_SCHEMA, loadTablesIn, runCli, scrape, TestPipeline, waitFor, writeLoad } from './support/pipeline.js';
import { freePort, useServices } from './support/services.js';

const env = useServices(test);

test('a destination gone past --max-destination-lag-bytes is detached (the slot moves on without it), and its consumer back gets a fresh copy and the stream', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'lagging', ['main', 'slow']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication));
  await env.pg.query('CREATE TABLE bulky (id int PRIMARY KEY, body text)');
  await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} ADD TABLE bulky`);
  const port = await freePort();
  const producer = pipeline.producer(['--max-destination-lag-bytes', String(2 * 1024 * 1024), '--metrics-port', String(port)]);
  const main = pipeline.duckdb('main');
  let slow = pipeline.duckdb('slow');
  const status = async () => (await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout;
  try {
    await pipeline.waitForCopy(env.redis.client);
    await slow.stop();
    // About 5 MB of WAL that `slow` never applies, in several transactions (a transaction the
    // producer has not received yet may be acknowledged from a keepalive: a slot restarts it whole).
    for (let part = 0; part < 10; part++)
      await env.pg.query(`INSERT INTO bulky SELECT g, repeat(md5(g::text), 32) FROM generate_series(${part * 500 + 1}, ${part * 500 + 500}) g`);
    await writeLoad(env.pg, 200, 0);
    await waitFor('slow to be detached', async () =>
      /destination slow: detached since \S+ \(\d+ bytes of WAL unapplied, more than --max-destination-lag-bytes 2097152\)/.test(await status()),
    );
    t.is((await scrape(port)).get('pg_replicate_destination_detached{destination="slow"}'), 1);
    t.regex(await status(), /destination main: ok/);
    // Held by main alone now: the slot reaches the end of the WAL.
    await pipeline.waitForCatchUp();
    t.regex((await runCli(['destinations', 'list', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout, /^slow\tdetached\t/m);

    slow = pipeline.duckdb('slow');
    await waitFor('slow to be registered again', async () => /destination slow: ok/.test(await status()));
    await env.pg.query("INSERT INTO bulky VALUES (0, 'after the detach')");
    await writeLoad(env.pg, 50, 0);
    await pipeline.waitForCatchUp();
    await waitFor('its copy to be applied and forgotten', async () => (await env.redis.client.hlen(`pgr:{${pipeline.pipeline}}:table-syncs`)) === 0);
    t.is((await scrape(port)).get('pg_replicate_destination_detached{destination="slow"}'), undefined, 'no longer detached');
  } finally {
    await Promise.all([producer.stop(), main.stop(), slow.stop()]);
  }
  t.regex(producer.stderr, /"destination":"slow".*destination detached/);
  t.regex(slow.stderr, /this destination was detached by the producer: registering it again/);
  for (const name of ['main', 'slow']) {
    const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath(name));
    t.deepEqual(duckdb, postgres, name);
  }
});

test('a pause past --max-destination-lag-bytes is lifted, not a reason to detach: the primary keeps no more WAL, and nothing is lost', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'pausebound', ['main']);
  // A schema of its own: the test beside it runs at the same time.
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'paused'));
  await env.pg.query('CREATE TABLE paused.bulky (id int PRIMARY KEY, body text)');
  await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} ADD TABLE paused.bulky`);
  const producer = pipeline.producer(['--max-destination-lag-bytes', String(2 * 1024 * 1024)]);
  const main = pipeline.duckdb('main');
  const status = async () => (await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout;
  try {
    await pipeline.waitForCopy(env.redis.client);
    // What `serve`'s pause does.
    await env.redis.client.hset(`pgr:{${pipeline.pipeline}}:state`, 'paused', '1');
    await waitFor('the producer to pause', async () => producer.stderr.includes('reading the slot paused by an operator'));
    for (let part = 0; part < 10; part++)
      await env.pg.query(`INSERT INTO paused.bulky SELECT g, repeat(md5(g::text), 32) FROM generate_series(${part * 500 + 1}, ${part * 500 + 500}) g`);
    await waitFor('the pause to be lifted at the bound', async () => producer.stderr.includes('pause lifted'));
    t.is(await env.redis.client.hget(`pgr:{${pipeline.pipeline}}:state`, 'paused'), null);
    await pipeline.waitForCatchUp();
    t.regex(await status(), /destination main: ok/);
  } finally {
    await Promise.all([producer.stop(), main.stop()]);
  }
  t.notRegex(producer.stderr, /destination detached/);
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'), 'paused');
  t.deepEqual(duckdb, postgres);
});
