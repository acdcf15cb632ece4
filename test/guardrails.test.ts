import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { Redis } from 'ioredis';
import pg from 'pg';
import { refusal } from '../producer/preflight.js';
import { CliProcess, duckdbRows, LOAD_SCHEMA, loadTablesIn, postgresRows, rowsAsText, runCli, TestPipeline, waitFor, writeLoad } from './support/pipeline.js';
import { freePort, spawnRedis, startPostgres, useServices } from './support/services.js';
import { sourceOf } from './support/sources.js';

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
    t.regex(
      second.stderr,
      new RegExp(
        `Another producer is running pipeline ${pipeline.pipeline}: pid ${producer.child.pid} on host \\S+ \\(since [^)]+\\)\\. A pipeline has one producer`,
      ),
    );
    t.false(await slotExists(otherSlot), 'the second producer created no slot');
    t.is(producer.child.exitCode, null, 'the first producer runs on');

    // Killed, its lease stays behind; on the same host its pid is gone, so the next takes over at once.
    await producer.kill9();
    // Its lease would expire by itself 10 s after the last renewal: made to live on, so that
    // only the check of its pid can free it (under load a start can take a while).
    t.is(await env.redis.client.pexpire(`pgr:{${pipeline.pipeline}}:producer`, 120_000), 1, 'the killed producer left its lease');
    producer = pipeline.producer();
    await writeLoad(env.pg, 50, 0, 'lease');
    await pipeline.waitForCatchUp();
    t.regex(producer.stderr, /taking over the lease of a producer on this host that is gone/);
    t.notRegex(producer.stderr, /lease is held: waiting/, 'it did not wait for the lease to expire');
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
  // The lease a producer on another host left, not renewed since: it has a while to live yet.
  const lease = `pgr:{${pipeline.pipeline}}:producer`;
  await env.redis.client.set(
    lease,
    JSON.stringify({ token: 'gone', host: 'elsewhere', pid: 1, since: new Date().toISOString(), renewed: Date.now() }),
    'PX',
    120_000,
  );
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await waitFor('the producer to wait for the lease', async () =>
      /producer lease is held: waiting to see whether its producer is alive/.test(producer.stderr),
    );
    await sleep(3_000);
    t.is(await env.redis.client.exists(`pgr:{${pipeline.pipeline}}:state`), 0, 'it does nothing while the lease is held');
    // The lease runs out (as it does 10 s after its producer last renewed it): the waiting producer takes it.
    await env.redis.client.pexpire(lease, 500);
    await pipeline.waitForCopy(env.redis.client);
    t.regex(String(await env.redis.client.get(lease)), new RegExp(`"pid":${producer.child.pid}`));
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
});

test("a consumer whose name the pipeline does not know exits 2 unless registered; destinations add registers one; status shows each destination's live consumers", async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'register', ['main', 'idle']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'register'));
  const producer = pipeline.producer();
  const main = pipeline.duckdb('main');
  let extra: CliProcess | undefined;
  const common = ['--pipeline', pipeline.pipeline, '--redis-url', env.redis.url];
  const status = async () => (await runCli(['status', ...common])).stdout;
  try {
    // `idle` has no consumer: the copy for it waits in its queues; main's is applied.
    await waitFor('main to apply the copy', async () => /destination main: ok, applied up to [0-9A-F]+\//.test(await status()));
    const typo = await runCli(['consumer', 'duckdb', '--name', 'mian', '--path', pipeline.duckdbPath('mian'), ...common]);
    t.is(typo.code, 2, typo.stderr);
    t.regex(
      typo.stderr,
      new RegExp(
        `Pipeline ${pipeline.pipeline} has no destination "mian" \\(it has: main, idle\\)\\. Check --name; to add a new destination .* start this consumer with --register or run pg-replicate destinations add mian`,
      ),
    );
    t.notRegex(await status(), /destination mian/, 'the mistyped name was not registered');

    const added = await runCli(['destinations', 'add', 'extra', ...common]);
    t.is(added.code, 0, added.stderr);
    t.regex(added.stdout, /destination extra added/);
    extra = new CliProcess(['consumer', 'duckdb', '--name', 'extra', '--path', pipeline.duckdbPath('extra'), ...common]);
    await writeLoad(env.pg, 50, 0, 'register');
    await waitFor('extra to catch up', async () => {
      const text = await status();
      return (
        /destination extra: ok, applied up to [0-9A-F]+\/[0-9A-F]+, 0 batches pending, 1 consumer alive/.test(text) &&
        /destination main: ok, applied up to [0-9A-F]+\/[0-9A-F]+, 0 batches pending, 1 consumer alive/.test(text)
      );
    });
    t.regex(await status(), /destination idle: ok, applied up to \S+( yet\))?, [1-9]\d* batches pending, no consumer/);
  } finally {
    await Promise.all([producer.stop(), main.stop(), extra?.stop()]);
  }
  t.regex(await status(), /destination main: .*, no consumer/, 'a consumer that stops leaves');
  for (const name of ['main', 'extra']) {
    const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath(name), 'register');
    t.deepEqual(duckdb, postgres, name);
  }
});

test('published tables the user cannot read are named with the GRANT to run: at start before any slot exists, and when added while running', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'grants', ['main']);
  await env.pg.query(`
    CREATE SCHEMA grants;
    CREATE TABLE grants.open (id int PRIMARY KEY);
    CREATE TABLE grants.secret (id int PRIMARY KEY);
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE grants.open, grants.secret;
    DROP ROLE IF EXISTS limited;
    CREATE ROLE limited LOGIN REPLICATION;
    GRANT USAGE ON SCHEMA grants TO limited;
    GRANT SELECT ON grants.open TO limited;`);
  const limitedUrl = env.pg.url.replace('postgres@', 'limited@');
  const args = pipeline.producerArgs().map((arg) => (arg === env.pg.url ? limitedUrl : arg));
  const refused = await runCli(args);
  t.is(refused.code, 2, refused.stderr);
  t.regex(
    refused.stderr,
    /The Postgres user limited cannot read this published table: grants\.secret\. As the tables' owner or a superuser, run: GRANT SELECT ON grants\.secret TO limited;/,
  );
  t.false(await slotExists(pipeline.slot), 'no slot was created');

  await env.pg.query('GRANT SELECT ON grants.secret TO limited');
  const producer = new CliProcess(args);
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    // A keyless table added while running gets the replica-identity warning; one the user
    // cannot read stops the producer, naming the GRANT (it would copy nothing).
    await env.pg.query(
      `CREATE TABLE grants.keyless (n int); GRANT SELECT ON grants.keyless TO limited; ALTER PUBLICATION ${pipeline.publication} ADD TABLE grants.keyless`,
    );
    await waitFor('the warning for the keyless table', async () =>
      /no replica identity.*ALTER TABLE grants\.keyless REPLICA IDENTITY FULL;/.test(producer.stderr),
    );
    await env.pg.query(`CREATE TABLE grants.hidden (id int PRIMARY KEY); ALTER PUBLICATION ${pipeline.publication} ADD TABLE grants.hidden`);
    t.is(await producer.exited, 2);
    t.regex(producer.stderr, /cannot read this published table: grants\.hidden\. .* run: GRANT SELECT ON grants\.hidden TO limited;/);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
});

test('pipeline drop --yes removes the slot and every Redis key of the pipeline, and nothing of another; refused while its producer runs or without --yes', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'dropme', ['main']);
  const other = new TestPipeline(env.pg, env.redis.url, 'keepme', ['main']);
  await env.pg.query(
    `${LOAD_SCHEMA(pipeline.publication, 'dropme')}; CREATE TABLE dropme.other (id int PRIMARY KEY); CREATE PUBLICATION ${other.publication} FOR TABLE dropme.other;`,
  );
  const drop = (extra: string[] = []) =>
    runCli(['pipeline', 'drop', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url, '--pg-url', env.pg.url, ...extra]);
  const keysOf = async (id: string) => [...(await env.redis.client.keys(`pgr:{${id}}:*`)), ...(await env.redis.client.keys(`pgr:{${id}.*`))];
  const processes = [pipeline.producer(), pipeline.duckdb('main'), other.producer(), other.duckdb('main')];
  try {
    await Promise.all([pipeline.waitForCopy(env.redis.client), other.waitForCopy(env.redis.client)]);
    await writeLoad(env.pg, 30, 0, 'dropme');
    await pipeline.waitForCatchUp();
    const running = await drop(['--yes']);
    t.is(running.code, 2);
    t.regex(running.stderr, /The producer of pipeline \S+ is running \(pid \d+ on host \S+;/);
  } finally {
    await Promise.all(processes.map((process) => process.stop()));
  }
  const unconfirmed = await drop();
  t.is(unconfirmed.code, 2);
  t.regex(
    unconfirmed.stderr,
    new RegExp(`This removes replication slot ${pipeline.slot} and every Redis key of pipeline ${pipeline.pipeline} .* Run it again with --yes`),
  );
  t.true(await slotExists(pipeline.slot));
  // Keys that expire by themselves (BullMQ's stalled-check marker) come and go meanwhile.
  const lastingKeysOf = async (id: string) => {
    const lasting: string[] = [];
    for (const key of await keysOf(id)) if ((await env.redis.client.pttl(key)) === -1) lasting.push(key);
    return lasting.sort();
  };
  const keysBefore = await lastingKeysOf(other.pipeline);
  const dropped = await drop(['--yes']);
  t.is(dropped.code, 0, dropped.stderr);
  t.regex(dropped.stdout, new RegExp(`pipeline ${pipeline.pipeline}: dropped replication slot ${pipeline.slot}, removed \\d+ Redis keys`));
  t.false(await slotExists(pipeline.slot));
  t.deepEqual(await keysOf(pipeline.pipeline), []);
  t.deepEqual(await lastingKeysOf(other.pipeline), keysBefore, 'the other pipeline keeps its keys');
  t.true(await slotExists(other.slot));
  t.is((await env.pg.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [pipeline.publication])).rowCount, 1, 'the publication stays');
  const { duckdb, postgres } = await loadTablesIn(env.pg, pipeline.duckdbPath('main'), 'dropme');
  t.deepEqual(duckdb, postgres, 'the destination keeps its data');
});

test('Redis refusing the login mid-run (its password changed): the producer and the consumer exit 2 saying so, without a password, instead of waiting for ever', async (t) => {
  // A Redis of the test's own: the file's other tests share the other one.
  const port = await freePort();
  const server = await spawnRedis(port, ['--save', '', '--appendonly', 'no']);
  const admin = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: null });
  admin.on('error', () => {});
  await admin.config('SET', 'requirepass', 'first-secret-1');
  await admin.auth('first-secret-1');
  const url = `redis://:first-secret-1@127.0.0.1:${port}`;
  const pipeline = new TestPipeline(env.pg, url, 'rotated', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'rotated'));
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(admin);
    await admin.config('SET', 'requirepass', 'second-secret-2');
    await admin.auth('second-secret-2');
    await admin.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes');
    const started = Date.now();
    t.deepEqual(await Promise.all([producer.exited, consumer.exited]), [2, 2]);
    t.true(Date.now() - started < 40_000, `both ended ${Date.now() - started} ms after the password changed`);
    for (const [name, process] of [
      ['producer', producer],
      ['consumer', consumer],
    ] as const) {
      t.regex(
        process.stderr,
        /Redis has refused pg-replicate's login for 1\d s \((NOAUTH|WRONGPASS)[^)]*\): the password or ACL user in --redis-url \/ REDIS_URL is wrong, or was changed or removed/,
        name,
      );
      t.false(
        /first-secret-1|second-secret-2/.test(process.stderr + process.stdout),
        `${name}: no password printed: ${(process.stderr + process.stdout)
          .split('\n')
          .filter((line) => /secret/.test(line))
          .join('\n')}`,
      );
    }
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
    admin.disconnect();
    await server.kill();
  }
});

test('a Postgres whose replication slots are all in use: the producer exits 2 with the query to find unused ones and the setting to raise', async (t) => {
  // A cluster of its own: filling every slot of the shared one would refuse the file's other tests.
  const own = await startPostgres({ walLevel: 'logical' });
  try {
    const max = Number((await own.query('SHOW max_replication_slots')).rows[0].max_replication_slots);
    for (let slot = 0; slot < max; slot++) await own.query(`SELECT pg_create_logical_replication_slot('forgotten_${slot}', 'pgoutput')`);
    const pipeline = new TestPipeline(own, env.redis.url, 'noslots', ['main']);
    await own.query(`CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION ${pipeline.publication} FOR TABLE items`);
    const run = await runCli(pipeline.producerArgs());
    t.is(run.code, 2, run.stderr);
    t.regex(run.stderr, /Postgres has no replication slot left for this pipeline \(all replication slots are in use\)\. Drop the slots nothing uses any more/);
    t.regex(run.stderr, /raise max_replication_slots/);
  } finally {
    await own.stop();
  }
});

test('a publication that does not publish deletes and truncates: the producer says so at start, and the destination keeps what Postgres removed', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'appendonly', ['main']);
  await env.pg.query(
    `CREATE TABLE history (id int PRIMARY KEY, note text); INSERT INTO history VALUES (1, 'kept'); CREATE PUBLICATION ${pipeline.publication} FOR TABLE history WITH (publish = 'insert, update')`,
  );
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
    await env.pg.query(`INSERT INTO history VALUES (2, 'new'); UPDATE history SET note = 'updated' WHERE id = 2; DELETE FROM history WHERE id = 1`);
    await pipeline.waitForCatchUp();
  });
  t.regex(
    producer.stderr,
    new RegExp(
      `publication ${pipeline.publication} does not publish delete, truncate: Postgres never sends those changes, so the destinations keep rows that Postgres has changed or removed\\. If they should mirror the tables: ALTER PUBLICATION ${pipeline.publication} SET \\(publish = 'insert, update, delete, truncate'\\)`,
    ),
  );
  t.deepEqual(
    await duckdbRows(pipeline.duckdbPath('main'), 'public.history', ['id', 'note']),
    rowsAsText([
      [1, 'kept'],
      [2, 'updated'],
    ]),
  );
});

test('a generated column (not sent by logical replication before PostgreSQL 18): the producer names it at start, and the other columns replicate', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'generated', ['main']);
  await env.pg.query(
    `CREATE TABLE lines (id int PRIMARY KEY, price numeric, qty int, total numeric GENERATED ALWAYS AS (price * qty) STORED); INSERT INTO lines (id, price, qty) VALUES (1, 2.5, 4); CREATE PUBLICATION ${pipeline.publication} FOR TABLE lines`,
  );
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
    await env.pg.query('INSERT INTO lines (id, price, qty) VALUES (2, 1, 3); UPDATE lines SET qty = 5 WHERE id = 1');
    await pipeline.waitForCatchUp();
  });
  t.regex(producer.stderr, /"columns":\["public\.lines\.total"\],"msg":"these generated columns are not sent by Postgres/);
  const columns = ['id', 'price', 'qty'];
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.lines', columns), await postgresRows(env.pg, 'lines', columns));
});

// A standby is made with the machine's binaries (pg_basebackup); PostgreSQL 16 and later decode on one.
const postgresSource = await sourceOf('postgres', undefined);
const standbyCannotDecode =
  postgresSource.kind === 'binaries' && Number(/(\d+)/.exec(execFileSync(join(postgresSource.path, 'postgres'), ['--version']).toString())?.[1]) < 16;
(standbyCannotDecode ? test : test.skip)(
  'a standby as the source (PostgreSQL 15 cannot decode on one): the producer exits 2 pointing at the primary, leaving nothing behind',
  async (t) => {
    const own = await startPostgres({ walLevel: 'logical' });
    const standby = await own.control!.standby!();
    try {
      const pipeline = new TestPipeline(standby, env.redis.url, 'standby', ['main']);
      await own.query(`CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1); CREATE PUBLICATION ${pipeline.publication} FOR TABLE items`);
      await waitFor(
        'the standby to replay the publication',
        async () => (await standby.query(`SELECT 1 FROM pg_publication WHERE pubname = '${pipeline.publication}'`)).rowCount === 1,
      );
      const run = await runCli(pipeline.producerArgs());
      t.is(run.code, 2, run.stderr);
      t.false(run.stderr.includes('restarting from the slot'), 'refused, not retried');
      t.regex(
        run.stderr,
        /PostgreSQL \d+ cannot decode logical replication on a standby\. The server at --pg-url \/ PG_URL is a standby \(in recovery\)\. Point --pg-url at the primary/,
      );
      t.is((await own.query('SELECT count(*)::int AS n FROM pg_replication_slots')).rows[0].n, 0, 'no slot on the primary');
      t.deepEqual(await env.redis.client.keys(`pgr:{${pipeline.pipeline}*`), [], 'no Redis key');
      // A running producer whose --pg-url comes to lead to a standby meets Postgres' own refusal when its session starts again.
      const refused = await standby.query("SELECT pg_create_logical_replication_slot('on_standby', 'pgoutput')").catch((error: unknown) => error);
      t.regex(
        refusal(refused)?.message ?? String(refused),
        /Postgres refuses logical decoding here \(logical decoding cannot be used while in recovery\)\. The server at --pg-url/,
      );
    } finally {
      await standby.stop();
      await own.stop();
    }
  },
);

/**
 * Postgres starts a logical slot only once every transaction that had written when its creation
 * began has ended, and says nothing while it waits. The producer names what holds the slot —
 * for its own slot at start and for a table sync's temporary one — and the way out.
 */
test('transactions left open in Postgres (a session idle in one, a prepared one) hold up a new slot: the producer names them and the way out, and copies once they end', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'slotwait', ['main']);
  await env.pg.query(`
    CREATE TABLE waited (id int PRIMARY KEY, note text);
    CREATE TABLE waited_later (id int PRIMARY KEY, note text);
    CREATE TABLE scratchpad (id int);
    INSERT INTO waited SELECT g, 'n' || g FROM generate_series(1, 100) g;
    INSERT INTO waited_later SELECT g, 'n' || g FROM generate_series(1, 10) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE waited;`);
  const holder = new pg.Client({ connectionString: env.pg.url });
  await holder.connect();
  const holderPid = (await holder.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
  const hold = async () => {
    await holder.query('BEGIN');
    await holder.query('INSERT INTO scratchpad VALUES (1)');
  };
  // A prepared transaction needs max_prepared_transactions (our test cluster has it; a PG_URL server may not).
  const canPrepare = Number((await env.pg.query('SHOW max_prepared_transactions')).rows[0].max_prepared_transactions) > 0;
  const warnings = (producer: CliProcess, slot: RegExp) =>
    producer.stderr
      .split('\n')
      .filter((line) => line.includes('waits for') && slot.test(line))
      .map((line) => JSON.parse(line));
  if (canPrepare) await holder.query(`BEGIN; INSERT INTO scratchpad VALUES (2); PREPARE TRANSACTION 'pgr_forgotten'`);
  await hold();
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    const warning = await waitFor("the slot's wait to be said", async () => warnings(producer, new RegExp(pipeline.slot))[0]);
    t.deepEqual(
      warning.transactions.map((open: { pid: number }) => open.pid),
      [holderPid],
    );
    t.regex(warning.msg, new RegExp(`pg_terminate_backend\\(pid\\) for pid ${holderPid}`));
    if (canPrepare) {
      t.deepEqual(
        warning.prepared.map((open: { gid: string }) => open.gid),
        ['pgr_forgotten'],
      );
      t.regex(warning.msg, /COMMIT PREPARED or ROLLBACK PREPARED 'pgr_forgotten'/);
    }
    t.notRegex(producer.stderr, /scratchpad/, "the sessions' queries are not logged (they may hold secrets)");
    t.notRegex(producer.stderr, /copying tables/, 'nothing is copied while the slot waits');
    await holder.query('COMMIT');
    if (canPrepare) await env.pg.query(`COMMIT PREPARED 'pgr_forgotten'`);
    await pipeline.waitForCopy(env.redis.client);

    // A table added while a transaction is open: its copy's temporary slot waits the same way.
    await hold();
    await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} ADD TABLE waited_later`);
    const syncWarning = await waitFor("the table sync's wait to be said", async () => warnings(producer, /pgr_sync_/)[0]);
    t.deepEqual(
      syncWarning.transactions.map((open: { pid: number }) => open.pid),
      [holderPid],
    );
    await holder.query('COMMIT');
    await env.pg.query(`UPDATE waited_later SET note = 'after' WHERE id = 1`);
    await pipeline.waitForCatchUp();
  } finally {
    await holder.end();
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  for (const table of ['waited', 'waited_later']) {
    t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), `public.${table}`, ['id', 'note']), await postgresRows(env.pg, table, ['id', 'note']), table);
  }
});

/**
 * Timeouts a role may carry (statement_timeout, idle_in_transaction_session_timeout) are off for
 * the producer's sessions: a copy waits, its COPY blocked and its snapshot's transaction idle,
 * while Redis makes room, and cut short it would be retried for ever.
 */
test('a Postgres role with 1 s statement and idle-in-transaction timeouts: a copy that waits for room longer than that completes, with no session restarted', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'timeouts', ['main']);
  await env.pg.query(`
    CREATE TABLE patient (id int PRIMARY KEY, note text);
    INSERT INTO patient SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE patient;
    DROP ROLE IF EXISTS hurried;
    CREATE ROLE hurried LOGIN REPLICATION;
    GRANT SELECT ON patient TO hurried;
    ALTER ROLE hurried SET statement_timeout = '1s';
    ALTER ROLE hurried SET idle_in_transaction_session_timeout = '1s';`);
  const hurriedUrl = env.pg.url.replace('postgres@', 'hurried@');
  // Chunks of 500 rows and room for 4 unapplied batches: the copy waits until the consumer starts, 3 s later.
  const args = pipeline.producerArgs(['--copy-chunk-rows', '500', '--max-backlog-batches', '4']).map((arg) => (arg === env.pg.url ? hurriedUrl : arg));
  const producer = new CliProcess(args);
  let consumer: CliProcess | undefined;
  try {
    await waitFor('the copy to start', async () => producer.stderr.includes('copying tables'));
    await sleep(3000);
    consumer = pipeline.duckdb('main');
    await pipeline.waitForCopy(env.redis.client);
  } finally {
    await Promise.all([producer.stop(), consumer?.stop()]);
  }
  t.notRegex(producer.stderr, /session ended|canceling statement|terminating connection/);
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.patient', ['id', 'note']), await postgresRows(env.pg, 'patient', ['id', 'note']));
});
