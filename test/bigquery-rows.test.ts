import test from 'ava';
import { useBigQueryEmulator } from './support/bigquery-emulator.js';
import { postgresRows, runCli, TestPipeline, waitFor } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);
const bq = useBigQueryEmulator(test);

/** Runs producer and BigQuery consumer around `body`, then waits until everything written is applied. */
async function withBigQuery(pipeline: TestPipeline, dataset: string, body: () => Promise<void>, project?: string): Promise<void> {
  const producer = pipeline.producer();
  const consumer = pipeline.bigquery('warehouse', bq.emulator.url, dataset, {}, project);
  try {
    await pipeline.waitForCopy(env.redis.client);
    await body();
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
}

test('types map to BigQuery types with their values, copied and streamed', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'bqtypes', ['warehouse']);
  const dataset = 'types_test';
  const values = `
    (ID, true, 32767, 9007199254740993, 1.5, 'Infinity', 12345678.91, 123456789012345678.123456789012, 3.14159265358979323846264338327950288,
     '-$1,234.56', 'quote '' backslash \\ newline
end', '\\x00ff10', '{"a": [1, 2.5, "x"], "b": null}', '2024-02-29', '0044-03-15 BC', '2024-02-29 13:45:01.123456', 'infinity',
     '2024-02-29 13:45:01.5+02', '23:59:59.999999', '1 year 2 mons -3 days 04:05:06.789', '-1 mons -00:00:01',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,NULL,3}', '{{"a b","c"},{NULL,"d"}}', 'happy')`;
  await env.pg.query(`
    CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE TABLE kinds (id int PRIMARY KEY, b bool, i2 smallint, i8 bigint, f4 real, f8 float8, n numeric(10,2), nbig numeric(30,12), nfree numeric,
      m money, t text, by bytea, j jsonb, d date, dbc date, ts timestamp, tsinf timestamp, tz timestamptz, tm time, iv interval, ivneg interval,
      u uuid, ia int[], ta text[][], e mood);
    INSERT INTO kinds VALUES ${values.replace('ID', '1')};
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE kinds;`);
  await withBigQuery(pipeline, dataset, async () => {
    await env.pg.query(`INSERT INTO kinds VALUES ${values.replace('ID', '2')}; INSERT INTO kinds (id) VALUES (3);`);
  });
  const columns = await bq.emulator.query(
    `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = '${dataset}' AND table_name = 'kinds' ORDER BY ordinal_position`,
  );
  t.deepEqual(Object.fromEntries(columns.map(([name, type]) => [name, type])), {
    id: 'BIGINT',
    b: 'BOOLEAN',
    i2: 'BIGINT',
    i8: 'BIGINT',
    f4: 'DOUBLE',
    f8: 'DOUBLE',
    n: 'DECIMAL(10,2)',
    nbig: 'DECIMAL(30,12)',
    nfree: 'VARCHAR',
    m: 'DECIMAL(19,2)',
    t: 'VARCHAR',
    by: 'BLOB',
    j: 'JSON',
    d: 'DATE',
    dbc: 'DATE',
    ts: 'TIMESTAMP',
    tsinf: 'TIMESTAMP',
    tz: 'TIMESTAMP WITH TIME ZONE',
    tm: 'TIME',
    iv: 'INTERVAL',
    ivneg: 'INTERVAL',
    u: 'VARCHAR',
    ia: 'JSON',
    ta: 'JSON',
    e: 'VARCHAR',
  });
  const expected = [
    'true',
    '32767',
    '9007199254740993',
    '1.5',
    'inf',
    '12345678.91',
    '123456789012345678.123456789012',
    '3.14159265358979323846264338327950288',
    '-1234.56',
    "quote ' backslash \\ newline\nend",
    '\\x00\\xFF\\x10',
    '{"a":[1,2.5,"x"],"b":null}',
    '2024-02-29',
    null,
    '2024-02-29 13:45:01.123456',
    null,
    '2024-02-29 11:45:01.5+00',
    '23:59:59.999999',
    '1 year 2 months -3 days 04:05:06.789',
    '-1 month -00:00:01',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '[1,null,3]',
    '[["a b","c"],[null,"d"]]',
    'happy',
  ];
  const names = columns.map(([name]) => `"${name}"`);
  const rows = await bq.emulator.query(`SELECT ${names.map((name) => `CAST(${name} AS VARCHAR)`).join(', ')} FROM "${dataset}".kinds ORDER BY id`);
  t.deepEqual(rows[0], ['1', ...expected], 'copied');
  t.deepEqual(rows[1], ['2', ...expected], 'streamed');
  t.deepEqual(rows[2], ['3', ...expected.map(() => null)], 'NULLs');
});

test('updates keep unchanged TOASTed values; deletes, truncates, keyless duplicates and schema changes apply exactly', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'bqrows', ['warehouse']);
  const dataset = 'rows_test';
  const big = `(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400))`;
  await env.pg.query(`
    CREATE TABLE docs (id int PRIMARY KEY, body text, version int);
    CREATE TABLE bag (label text, n int);
    ALTER TABLE bag REPLICA IDENTITY FULL;
    CREATE TABLE scratch (id int PRIMARY KEY);
    INSERT INTO docs SELECT g, ${big}, 0 FROM generate_series(1, 5) g;
    INSERT INTO bag VALUES ('x', 1), ('x', 1), ('x', 1), ('y', 2);
    INSERT INTO scratch SELECT generate_series(1, 10);
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE docs, bag, scratch;`);
  await withBigQuery(pipeline, dataset, async () => {
    await env.pg.query(`
      UPDATE docs SET version = version + 1;
      BEGIN; UPDATE docs SET version = 10 WHERE id = 1; UPDATE docs SET id = 100 WHERE id = 1; UPDATE docs SET version = 11 WHERE id = 100; COMMIT;
      DELETE FROM docs WHERE id = 2;
      INSERT INTO docs VALUES (6, 'small', 0);
      DELETE FROM bag WHERE ctid = (SELECT min(ctid) FROM bag WHERE label = 'x');
      UPDATE bag SET n = 3 WHERE label = 'y';
      INSERT INTO bag VALUES ('y', 3);
      TRUNCATE scratch;
      INSERT INTO scratch VALUES (42);
      ALTER TABLE docs ADD COLUMN tag text DEFAULT 'old';
      ALTER TABLE docs RENAME COLUMN version TO revision;
      UPDATE docs SET tag = 'new' WHERE id = 3;`);
  });
  for (const [table, columns] of [
    ['docs', ['id', 'body', 'revision', 'tag']],
    ['bag', ['label', 'n']],
    ['scratch', ['id']],
  ] as [string, string[]][]) {
    t.deepEqual(await bq.emulator.tableRows(dataset, table, columns), await postgresRows(env.pg, table, columns), table);
  }
});

test('transient errors (503, 429) are retried, at start as later; a permanent one (403) parks the partition with advice until access returns', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'bqfaults', ['warehouse']);
  const dataset = 'faults_test';
  await env.pg.query(`CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items SELECT g, 'seed' FROM generate_series(1, 100) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE items;`);
  const status = async () => JSON.parse((await runCli(['status', '--json', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url])).stdout);
  // The consumer starts while BigQuery is unavailable: it waits for it (withBigQuery fails if it exits).
  const before = bq.emulator.faultsServed;
  bq.emulator.failNext(3, 503, 'backendError', /\/projects\/faults-project\//);
  await withBigQuery(
    pipeline,
    dataset,
    async () => {
      t.true(bq.emulator.faultsServed >= before + 3, 'the consumer met the unavailable BigQuery at start');
      const served = bq.emulator.faultsServed;
      // Faults only for this test's project: the other tests share the emulator.
      bq.emulator.failNext(2, 503, 'backendError', /^POST .*\/projects\/faults-project\/jobs$/);
      bq.emulator.failNext(1, 429, 'rateLimitExceeded', /\/projects\/faults-project\/queries/);
      await env.pg.query(`UPDATE items SET label = 'after outage' WHERE id <= 50`);
      await waitFor('the injected faults to be served', async () => bq.emulator.faultsServed >= served + 3);
      await pipeline.waitForCatchUp();

      bq.emulator.denyAccess('faults-project', true);
      await env.pg.query(`UPDATE items SET label = 'while denied' WHERE id > 50`);
      const parked = await waitFor('the partition to be parked', async () => {
        const destination = (await status()).destinations.find((candidate: { name: string }) => candidate.name === 'warehouse');
        return destination?.state === 'parked' ? destination : undefined;
      });
      t.regex(JSON.stringify(parked), /roles\/bigquery\.dataEditor/, 'the status says which roles are missing');
      bq.emulator.denyAccess('faults-project', false);
    },
    'faults-project',
  );
  t.deepEqual(await bq.emulator.tableRows(dataset, 'items', ['id', 'label']), await postgresRows(env.pg, 'items', ['id', 'label']));
  const destination = (await status()).destinations.find((candidate: { name: string }) => candidate.name === 'warehouse');
  t.is(destination.state, 'ok', 'the partition recovered by itself');
});

test('bad BigQuery flags are refused with advice and exit code 2', async (t) => {
  const common = ['consumer', 'bigquery', '--name', 'w', '--pipeline', 'p', '--redis-url', env.redis.url];
  const missing = await runCli(common);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /--project \(BIGQUERY_PROJECT\) is required/);
  t.regex(missing.stderr, /--dataset \(BIGQUERY_DATASET\) is required/);
  const keyFile = await runCli([...common, '--project', 'p-1', '--dataset', 'd', '--key-file', '/nonexistent/key.json']);
  t.is(keyFile.code, 2);
  t.regex(keyFile.stderr, /--key-file \/nonexistent\/key\.json does not exist/);
});

test('names that cleaning or case would make equal in BigQuery get distinct, stable names, each table equal to its source', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'bqnames', ['warehouse']);
  const dataset = 'names_test';
  const { bigQueryTableName } = await import('../consumers/bigquery/types.js');
  // Source table → [schema, name] as the destination sees it.
  const tables: [string, string, string][] = [
    ['public."order-items"', 'public', 'order-items'],
    ['public.order_items', 'public', 'order_items'],
    ['"a".b__c', 'a', 'b__c'],
    ['"a__b".c', 'a__b', 'c'],
    ['public."ñ"', 'public', 'ñ'],
    ['public."ü"', 'public', 'ü'],
  ];
  await env.pg.query(`
    CREATE SCHEMA "a"; CREATE SCHEMA "a__b";
    ${tables.map(([table], index) => `CREATE TABLE ${table} (id int PRIMARY KEY, "a-b" text, a_b text, "ID" int); INSERT INTO ${table} SELECT g, 'dash ${index}', 'under ' || g, -g FROM generate_series(1, 20) g;`).join('\n')}
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${tables.map(([table]) => table).join(', ')};`);
  await withBigQuery(pipeline, dataset, async () => {
    for (const [table] of tables) await env.pg.query(`UPDATE ${table} SET "a-b" = 'changed', "ID" = 0 WHERE id <= 5; DELETE FROM ${table} WHERE id > 18`);
  });
  const names = tables.map(([, schema, name]) => bigQueryTableName({ schema, name }));
  t.is(new Set(names.map((name) => name.toLowerCase())).size, tables.length, `distinct: ${names.join(', ')}`);
  t.is(names[1], 'order_items', 'a name cleaning does not change is kept');
  const { bigQueryName } = await import('../consumers/bigquery/types.js');
  for (const [index, [table]] of tables.entries()) {
    // "ID" follows id (attnum 1) but for case: ID__4; "a-b" is cleaned and marked.
    t.deepEqual(
      await bq.emulator.tableRows(dataset, names[index], ['id', bigQueryName('a-b'), 'a_b', 'ID__4']),
      await postgresRows(env.pg, table, ['id', '"a-b"', 'a_b', '"ID"']),
      table,
    );
  }
});
