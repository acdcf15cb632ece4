import { DuckDBInstance } from '@duckdb/node-api';
import test from 'ava';
import { duckdbRows, postgresRows, TestPipeline } from './support/pipeline.js';
import { useServices } from './support/services.js';

/** Updates that do not carry the whole row, tables without a primary key, and every form of TRUNCATE. */
const env = useServices(test);

/** About 12 kB of random hex: too big and too random to stay inline, so Postgres TOASTs it. */
const BIG = `(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400))`;

test('unchanged TOASTed values survive updates of other columns, with REPLICA IDENTITY DEFAULT and FULL', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'toast', ['main']);
  await env.pg.query(`
    CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
    CREATE TABLE docs_full (id int PRIMARY KEY, body text, n int);
    ALTER TABLE docs_full REPLICA IDENTITY FULL;
    INSERT INTO docs SELECT g, ${BIG}, g FROM generate_series(1, 3) g;
    INSERT INTO docs_full SELECT g, ${BIG}, g FROM generate_series(1, 3) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE docs, docs_full;
  `);
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
    for (const table of ['docs', 'docs_full']) {
      await env.pg.query(`UPDATE ${table} SET n = n + 10 WHERE id = 1`);
      await env.pg.query(`INSERT INTO ${table} VALUES (4, ${BIG}, 4)`);
      await env.pg.query(
        `BEGIN; INSERT INTO ${table} VALUES (5, ${BIG}, 5); UPDATE ${table} SET n = 50 WHERE id = 5; UPDATE ${table} SET n = 51 WHERE id = 5; COMMIT`,
      );
      await env.pg.query(`UPDATE ${table} SET n = n + 100`);
      await env.pg.query(`UPDATE ${table} SET body = 'small now' WHERE id = 2`);
      await env.pg.query(`UPDATE ${table} SET id = 30 WHERE id = 3`);
    }
    await pipeline.waitForCatchUp();
  });
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');
  const toasted = (await env.pg.query('SELECT count(*)::int AS n FROM docs WHERE length(body) > 8000')).rows[0].n;
  t.true(toasted >= 3, 'the test really has values over 8 kB');
  for (const table of ['docs', 'docs_full']) {
    t.deepEqual(
      await duckdbRows(pipeline.duckdbPath('main'), `public.${table}`, ['id', 'body', 'n']),
      await postgresRows(env.pg, table, ['id', 'body', 'n']),
      table,
    );
  }
});

test("values of several megabytes are copied and streamed whole (beyond a CSV reader's default line limit)", async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'huge', ['main']);
  // Random hex of about `mb` megabytes: TOASTed, and lines far beyond DuckDB's 2 MB default.
  const huge = (mb: number) => `(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, ${mb * 32768}))`;
  await env.pg.query(`
    CREATE TABLE huge (id int PRIMARY KEY, body text, n int);
    INSERT INTO huge VALUES (1, ${huge(3)}, 1), (2, 'small', 2), (3, ${huge(3)}, 3);
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE huge;
  `);
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
    await env.pg.query(`INSERT INTO huge VALUES (4, ${huge(5)}, 4)`);
    await env.pg.query(`UPDATE huge SET body = ${huge(4)} WHERE id = 2`);
    await env.pg.query(`BEGIN; INSERT INTO huge VALUES (5, ${huge(3)}, 5); UPDATE huge SET n = 50 WHERE id = 5; COMMIT`);
    await pipeline.waitForCatchUp();
  });
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');
  const columns = ['id', 'md5(body)', 'length(body)', 'n'];
  const expected = await postgresRows(env.pg, 'huge', columns);
  t.is(expected.length, 5);
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.huge', columns), expected);
});

test('one transaction of several batches (inserts, updates, key changes and deletes of the same rows) applies exactly, each batch planned while the one before is applied', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'bigtx', ['main']);
  await env.pg.query(`
    CREATE TABLE bigtx (id int PRIMARY KEY, label text, n int);
    INSERT INTO bigtx SELECT g, 'before ' || g, g FROM generate_series(1, 10000) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE bigtx;
  `);
  const producer = pipeline.producer(['--max-batch-changes', '20000']);
  const consumer = pipeline.duckdb('main', { LOG_LEVEL: 'debug' });
  try {
    await pipeline.waitForCopy(env.redis.client);
    // About 53,000 changes: three batches of at most 20,000, later ones touching rows of earlier ones.
    await env.pg.query(`
      BEGIN;
      INSERT INTO bigtx SELECT g, 'new ' || g, g FROM generate_series(10001, 40000) g;
      UPDATE bigtx SET label = label || ', updated', n = n + 1 WHERE id % 3 = 0;
      UPDATE bigtx SET id = id + 100000 WHERE id % 10 = 1;
      DELETE FROM bigtx WHERE id % 7 = 0;
      COMMIT;
    `);
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  const columns = ['id', 'label', 'n'];
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.bigtx', columns), await postgresRows(env.pg, 'bigtx', columns));
  const applied = consumer.stderr
    .split('\n')
    .filter((line) => line.includes('"batch applied"'))
    .map((line) => JSON.parse(line) as { changes?: number; planned?: string })
    .filter((batch) => (batch.changes ?? 0) >= 5000);
  t.true(applied.length >= 2, 'the transaction came in several large batches');
  t.true(
    applied.some((batch) => batch.planned === 'ahead'),
    'a batch was planned while the one before it was applied',
  );
});

test('a string column Postgres counts as mostly distinct is stored with FSST; without statistics DuckDB chooses (here a dictionary where values repeat)', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'storage', ['main']);
  // Both columns hold the same values: 250,000 rows of one value (DuckDB picks a compression for
  // each row group of 122,880 rows), then as many distinct ones.
  // Postgres keeps no statistics on the second; on the first, its estimate is stated (ANALYZE's
  // own, from a random sample, would be about as high, but not the same in every run).
  await env.pg.query(`
    CREATE TABLE storage (id int PRIMARY KEY, counted text, uncounted text);
    ALTER TABLE storage ALTER COLUMN uncounted SET STATISTICS 0, ALTER COLUMN counted SET (n_distinct = -0.9);
    INSERT INTO storage SELECT g, v, v FROM (SELECT g, CASE WHEN g <= 250000 THEN repeat('same value ', 3) ELSE 'distinct ' || g END AS v FROM generate_series(1, 500000) g) s;
    ANALYZE storage;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE storage;
  `);
  await pipeline.runWithDuckdb(env.redis.client, async () => {});
  const columns = ['id', 'counted', 'uncounted'];
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.storage', columns), await postgresRows(env.pg, 'storage', columns));
  const instance = await DuckDBInstance.create(pipeline.duckdbPath('main'), { access_mode: 'READ_ONLY' });
  const connection = await instance.connect();
  const compressions = async (column: string) =>
    (
      await connection.runAndReadAll(
        `SELECT DISTINCT compression FROM pragma_storage_info('public.storage') WHERE column_name = '${column}' AND segment_type = 'VARCHAR' ORDER BY 1`,
      )
    )
      .getRows()
      .map(([name]) => name);
  try {
    t.deepEqual(await compressions('counted'), ['FSST']);
    t.true((await compressions('uncounted')).includes('Dictionary'));
  } finally {
    connection.closeSync();
    instance.closeSync();
  }
});

test('tables without a primary key: FULL replicates duplicates exactly, USING INDEX works, DEFAULT and NOTHING are reported with the fix', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'identity', ['main']);
  await env.pg.query(`
    CREATE TABLE dupes (a int, b text);
    ALTER TABLE dupes REPLICA IDENTITY FULL;
    INSERT INTO dupes VALUES (1, 'x'), (1, 'x'), (1, 'x'), (2, NULL), (2, NULL), (3, 'z'), (3, 'z'), (3, 'z');
    CREATE TABLE by_index (code text NOT NULL, v int);
    CREATE UNIQUE INDEX by_index_code ON by_index (code);
    ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
    INSERT INTO by_index VALUES ('a', 1), ('b', 2);
    CREATE TABLE no_key (v int);
    CREATE TABLE no_identity (v int PRIMARY KEY);
    ALTER TABLE no_identity REPLICA IDENTITY NOTHING;
    INSERT INTO no_key VALUES (1);
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE dupes, by_index, no_key, no_identity;
  `);
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
    await env.pg.query(`
      DELETE FROM dupes WHERE ctid = (SELECT ctid FROM dupes WHERE a = 1 LIMIT 1);
      UPDATE dupes SET b = 'y' WHERE ctid = (SELECT ctid FROM dupes WHERE a = 1 LIMIT 1);
      INSERT INTO dupes VALUES (2, NULL);
      DELETE FROM dupes WHERE ctid = (SELECT ctid FROM dupes WHERE a = 2 LIMIT 1);
      DELETE FROM dupes WHERE ctid IN (SELECT ctid FROM dupes WHERE a = 3 LIMIT 2);
      INSERT INTO dupes VALUES (4, 'w'), (4, 'w');
      UPDATE by_index SET v = 10 WHERE code = 'a';
      UPDATE by_index SET code = 'c' WHERE code = 'b';
      DELETE FROM by_index WHERE code = 'a';
      INSERT INTO by_index VALUES ('d', 4);
      INSERT INTO no_key VALUES (2);
      INSERT INTO no_identity VALUES (7);
    `);
    const refused = await env.pg.query('UPDATE no_key SET v = 3').catch((error: Error) => error);
    t.regex(String(refused), /does not have a replica identity/);
    await pipeline.waitForCatchUp();
  });
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');
  const path = pipeline.duckdbPath('main');
  t.deepEqual(await duckdbRows(path, 'public.dupes', ['a', 'b']), await postgresRows(env.pg, 'dupes', ['a', 'b']));
  t.is((await duckdbRows(path, 'public.dupes', ['a', 'b'])).length, 7);
  t.deepEqual(await duckdbRows(path, 'public.by_index', ['code', 'v']), await postgresRows(env.pg, 'by_index', ['code', 'v']));
  t.deepEqual(await duckdbRows(path, 'public.no_key', ['v']), await postgresRows(env.pg, 'no_key', ['v']));
  t.deepEqual(await duckdbRows(path, 'public.no_identity', ['v']), await postgresRows(env.pg, 'no_identity', ['v']));
  t.regex(producer.stderr, /no replica identity/);
  t.regex(producer.stderr, /ALTER TABLE public.no_key REPLICA IDENTITY FULL;/);
  t.regex(producer.stderr, /ALTER TABLE public.no_identity REPLICA IDENTITY FULL;/);
  t.notRegex(producer.stderr, /ALTER TABLE public.dupes/);
});

test('TRUNCATE: one table, several at once, CASCADE, RESTART IDENTITY, and truncate then insert in one transaction', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'truncate', ['main']);
  const tables = ['t_one', 't_two', 't_three', 't_parent', 't_child', 't_serial'];
  await env.pg.query(`
    CREATE TABLE t_one (id int PRIMARY KEY);
    CREATE TABLE t_two (id int PRIMARY KEY);
    CREATE TABLE t_three (id int PRIMARY KEY);
    CREATE TABLE t_parent (id int PRIMARY KEY);
    CREATE TABLE t_child (id int PRIMARY KEY, parent int REFERENCES t_parent);
    CREATE TABLE t_serial (id serial PRIMARY KEY, v text);
    INSERT INTO t_one SELECT generate_series(1, 10); INSERT INTO t_two SELECT generate_series(1, 10); INSERT INTO t_three SELECT generate_series(1, 10);
    INSERT INTO t_parent SELECT generate_series(1, 10); INSERT INTO t_child SELECT g, g FROM generate_series(1, 10) g;
    INSERT INTO t_serial (v) SELECT 'v' || g FROM generate_series(1, 10) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${tables.join(', ')};
  `);
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
    await env.pg.query('TRUNCATE t_one');
    await env.pg.query('INSERT INTO t_one VALUES (100)');
    await env.pg.query('TRUNCATE t_two, t_three');
    await env.pg.query('INSERT INTO t_three VALUES (300)');
    await env.pg.query('TRUNCATE t_parent CASCADE');
    await env.pg.query('INSERT INTO t_parent VALUES (1); INSERT INTO t_child VALUES (1, 1)');
    await env.pg.query('TRUNCATE t_serial RESTART IDENTITY');
    await env.pg.query("INSERT INTO t_serial (v) VALUES ('restarted')");
    await env.pg.query('BEGIN; INSERT INTO t_two VALUES (1); TRUNCATE t_two; INSERT INTO t_two VALUES (2), (3); UPDATE t_two SET id = 4 WHERE id = 3; COMMIT');
    await pipeline.waitForCatchUp();
  });
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');
  const columns: Record<string, string[]> = { t_child: ['id', 'parent'], t_serial: ['id', 'v'] };
  for (const table of tables) {
    const wanted = columns[table] ?? ['id'];
    t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), `public.${table}`, wanted), await postgresRows(env.pg, table, wanted), table);
  }
  t.deepEqual(await postgresRows(env.pg, 't_serial', ['id', 'v']), ['["1","restarted"]']);
});
