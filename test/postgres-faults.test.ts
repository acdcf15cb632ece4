import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { LOAD_SCHEMA, loadRound, loadTablesIn, loadUntilStopped, runCli, scrape, TestPipeline, waitFor } from './support/pipeline.js';
import { freePort, useServices } from './support/services.js';

const env = useServices(test);
// These tests stop and restart the file's Postgres: they run one at a time, and only on a
// cluster of our own (not with PG_URL).
const serial = process.env.PG_URL ? test.skip : test.serial;

/** The pid of the walsender streaming the pipeline's slot, once one does. */
async function walsender(pipeline: TestPipeline): Promise<number> {
  return waitFor(`a walsender on ${pipeline.slot}`, async () => {
    const row = (await env.pg.query('SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active', [pipeline.slot]).catch(() => ({ rows: [] })))
      .rows[0];
    return row?.active_pid ?? undefined;
  });
}

/** Waits until a walsender other than `before` streams the slot: the producer reconnected. */
async function reconnected(pipeline: TestPipeline, before: number): Promise<number> {
  return waitFor('the producer to stream again', async () => {
    const pid = await walsender(pipeline);
    return pid !== before ? pid : undefined;
  });
}

const LOST = /lost the connection to Postgres/g;
const BACK = /Postgres is reachable again/g;

serial(
  'the producer rides out its connections terminated and Postgres restarted (fast, then immediate) under a write load, and DuckDB equals Postgres',
  async (t) => {
    const pipeline = new TestPipeline(env.pg, env.redis.url, 'pgrestart', ['main']);
    await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'restarted'));
    const producer = pipeline.producer();
    const consumer = pipeline.duckdb('main');
    let load: ReturnType<typeof loadUntilStopped> | undefined;
    try {
      await pipeline.waitForCopy(env.redis.client);
      load = loadUntilStopped(env.pg, (n) => loadRound('restarted', n));
      let pid = await walsender(pipeline);
      await sleep(500);
      // What a failover or a DBA's pg_terminate_backend does: every connection of ours, at once.
      await env.pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'pg-replicate%' AND pid <> pg_backend_pid()");
      pid = await reconnected(pipeline, pid);
      await sleep(500);
      await env.pg.control!.restart('fast');
      pid = await reconnected(pipeline, pid);
      await sleep(500);
      await env.pg.control!.restart('immediate');
      await reconnected(pipeline, pid);
      await sleep(500);
      await load.stop();
      await pipeline.waitForCatchUp();
      t.is(producer.child.exitCode, null, 'the producer process never ended');
    } finally {
      await load?.stop();
      await Promise.all([producer.stop(), consumer.stop()]);
    }
    const outages = producer.stderr.match(LOST)?.length ?? 0;
    t.true(outages >= 3, `each of the three faults was noticed (${outages})`);
    t.is(producer.stderr.match(BACK)?.length, outages, 'and each outage ended');
    t.notRegex(producer.stderr, /session ended/, 'no other kind of restart');
    const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'), 'restarted');
    t.deepEqual(duckdb, postgres);
  },
);

serial('Postgres down for a minute: the producer says so once, status and the metric show it, and it streams again when Postgres is back', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'pgdown', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'down'));
  const port = await freePort();
  const producer = pipeline.producer(['--metrics-port', String(port)]);
  const consumer = pipeline.duckdb('main');
  const status = async () => (await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout;
  try {
    await pipeline.waitForCopy(env.redis.client);
    await walsender(pipeline);
    t.is((await scrape(port)).get('pg_replicate_postgres_connected'), 1);
    await env.pg.control!.shutdown();
    try {
      await waitFor('status to show the outage', async () => /producer: reconnecting to Postgres since \S+ \(.+\)/.test(await status()));
      t.is((await scrape(port)).get('pg_replicate_postgres_connected'), 0);
      // A minute down: a dozen reconnection attempts fail meanwhile (every 5 s), none logged above debug.
      await sleep(60_000);
    } finally {
      await env.pg.control!.start();
    }
    await env.pg.query("INSERT INTO down.events VALUES (-1, 'after the outage')");
    await pipeline.waitForCatchUp();
    t.notRegex(await status(), /reconnecting/);
    t.is((await scrape(port)).get('pg_replicate_postgres_connected'), 1);
    t.is(producer.child.exitCode, null, 'the producer process never ended');
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.is(producer.stderr.match(LOST)?.length, 1, 'one line when Postgres went away');
  t.is(producer.stderr.match(BACK)?.length, 1, 'one line when it came back');
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'), 'down');
  t.deepEqual(duckdb, postgres);
});

serial(
  'a replication slot dropped or invalidated is never re-created silently: the producer exits 2 with the fix, and resync --all recovers every row',
  async (t) => {
    const pipeline = new TestPipeline(env.pg, env.redis.url, 'slotloss', ['main']);
    await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'lost'));
    let consumer = pipeline.duckdb('main');
    let producer = pipeline.producer();
    // DuckDB is read with its consumer stopped (a DuckDB file has one writer, or readers).
    const compare = async (message: string) => {
      await consumer.stop();
      const tables = await loadTablesIn(env.pg, pipeline.duckdbPath('main'), 'lost');
      t.deepEqual(tables.duckdb, tables.postgres, message);
      consumer = pipeline.duckdb('main');
    };
    try {
      await pipeline.waitForCopy(env.redis.client);
      await env.pg.query("INSERT INTO lost.events VALUES (1, 'streamed')");
      await pipeline.waitForCatchUp();
      await producer.stop();

      // Dropped (by hand, or lost in a failover) while the producer was stopped; rows written meanwhile.
      await env.pg.query('SELECT pg_drop_replication_slot($1)', [pipeline.slot]);
      await env.pg.query("INSERT INTO lost.events VALUES (2, 'written while the slot was gone')");
      let refused = await runCli(pipeline.producerArgs());
      t.is(refused.code, 2, refused.stderr);
      t.regex(refused.stderr, new RegExp(`Replication slot ${pipeline.slot} no longer exists, but pipeline ${pipeline.pipeline} streamed from it`));
      t.regex(refused.stderr, /pg-replicate resync --all/);
      t.is((await env.pg.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [pipeline.slot])).rowCount, 0, 'no slot was created');

      const requested = await runCli(['resync', '--all', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url]);
      t.is(requested.code, 0, requested.stderr);
      producer = pipeline.producer();
      await pipeline.waitForCopy(env.redis.client);
      await pipeline.waitForCatchUp();
      await compare('the recopy brought the rows written while the slot was gone');

      // Invalidated: Postgres removed WAL the slot still needed (max_slot_wal_keep_size).
      await producer.stop();
      await env.pg.query("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
      await env.pg.query('SELECT pg_reload_conf()');
      try {
        await waitFor('the slot to be invalidated', async () => {
          await env.pg.query("INSERT INTO lost.events SELECT g, repeat('w', 200) FROM generate_series(1, 20000) g");
          await env.pg.query('SELECT pg_switch_wal()');
          await env.pg.query('CHECKPOINT');
          return (await env.pg.query("SELECT wal_status = 'lost' AS lost FROM pg_replication_slots WHERE slot_name = $1", [pipeline.slot])).rows[0]?.lost;
        });
      } finally {
        await env.pg.query('ALTER SYSTEM RESET max_slot_wal_keep_size');
        await env.pg.query('SELECT pg_reload_conf()');
      }
      refused = await runCli(pipeline.producerArgs());
      t.is(refused.code, 2, refused.stderr);
      t.regex(refused.stderr, /was invalidated by Postgres \(wal_status = lost\)/);
      t.regex(refused.stderr, /pg-replicate resync --all/);
      const shown = await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url, '--pg-url', env.pg.url]);
      t.regex(shown.stdout, /wal_status lost \(invalidated: run pg-replicate resync --all\)/);

      t.is((await runCli(['resync', '--all', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).code, 0);
      producer = pipeline.producer();
      await pipeline.waitForCopy(env.redis.client);
      await pipeline.waitForCatchUp();
      await compare('the recopy after the invalidation');

      // Asked of a running producer, resync --all takes effect at once.
      const copies = () => producer.stderr.match(/created replication slot; copying tables/g)?.length ?? 0;
      const before = copies();
      t.is((await runCli(['resync', '--all', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).code, 0);
      await waitFor('the running producer to copy again', async () => copies() > before);
      await pipeline.waitForCopy(env.redis.client);
      await pipeline.waitForCatchUp();
      await compare('after resync --all asked of the running producer');
      const json = JSON.parse(
        (await runCli(['status', '--json', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url, '--pg-url', env.pg.url])).stdout,
      );
      t.is(json.slotWalStatus, 'reserved');
      t.is(typeof json.slotLagBytes, 'number');
    } finally {
      await Promise.all([producer.stop(), consumer.stop()]);
    }
  },
);

serial('in cdc mode a dropped slot is not re-created at the current position: the producer exits 2', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'cdcslot', ['main']);
  await env.pg.query(`CREATE TABLE notes (id int PRIMARY KEY, body text); CREATE PUBLICATION ${pipeline.publication} FOR TABLE notes;`);
  const consumer = pipeline.duckdb('main');
  const producer = pipeline.producer(['--mode', 'cdc']);
  try {
    await walsender(pipeline);
    await env.pg.query("INSERT INTO notes VALUES (1, 'streamed')");
    await pipeline.waitForCatchUp();
    await producer.stop();
    await env.pg.query('SELECT pg_drop_replication_slot($1)', [pipeline.slot]);
    const refused = await runCli(pipeline.producerArgs(['--mode', 'cdc']));
    t.is(refused.code, 2, refused.stderr);
    t.regex(refused.stderr, /no longer exists/);
    t.is((await env.pg.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [pipeline.slot])).rowCount, 0);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
});
