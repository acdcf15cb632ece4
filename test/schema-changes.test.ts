import test from 'ava';
import { duckdbRows, postgresRows, TestPipeline } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

const columnsOf = async (table: string) =>
  (await env.pg.query(`SELECT attname FROM pg_attribute WHERE attrelid = '${table}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`)).rows.map(
    (row) => row.attname as string,
  );

test('schema changes apply in stream order: add (with and without default), drop, rename column, retype, new key, table rename', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'schema', ['main']);
  await env.pg.query(`
    CREATE TABLE evolving (id int PRIMARY KEY, a text, b int, c text);
    INSERT INTO evolving SELECT g, 'a' || g, g, 'c' || g FROM generate_series(1, 5) g;
    CREATE TABLE keyless (k int, v text);
    ALTER TABLE keyless REPLICA IDENTITY FULL;
    INSERT INTO keyless VALUES (1, 'one'), (2, 'two');
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE evolving, keyless;
  `);
  const { producer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
    const steps = [
      "INSERT INTO evolving VALUES (6, 'a6', 6, 'c6')",
      'ALTER TABLE evolving ADD COLUMN d int',
      "INSERT INTO evolving VALUES (7, 'a7', 7, 'c7', 70)",
      "ALTER TABLE evolving ADD COLUMN e text DEFAULT 'dflt'",
      "INSERT INTO evolving VALUES (8, 'a8', 8, 'c8', 80, 'e8'); UPDATE evolving SET b = b + 100 WHERE id = 1",
      // The default older rows hold is read from the catalog; a later rewrite (ALTER COLUMN TYPE
      // below) erases it there, so the producer must have seen the new column before it.
      'CATCH UP',
      'ALTER TABLE evolving DROP COLUMN c',
      "INSERT INTO evolving VALUES (9, 'a9', 9, 90, 'e9')",
      'ALTER TABLE evolving RENAME COLUMN a TO a_renamed',
      "UPDATE evolving SET a_renamed = 'renamed' WHERE id = 2; INSERT INTO evolving VALUES (10, 'a10', 10, 100, 'e10')",
      'ALTER TABLE evolving ALTER COLUMN b TYPE bigint',
      "INSERT INTO evolving VALUES (11, 'a11', 9000000000, 110, 'e11')",
      'DELETE FROM evolving WHERE id = 11',
      'CATCH UP',
      'ALTER TABLE evolving ALTER COLUMN b TYPE int; ALTER TABLE evolving ALTER COLUMN d TYPE smallint; ALTER TABLE evolving ALTER COLUMN a_renamed TYPE varchar(20)',
      "INSERT INTO evolving VALUES (12, 'a12', 12, 120, 'e12')",
      'ALTER TABLE evolving RENAME TO evolved',
      "INSERT INTO evolved VALUES (13, 'a13', 13, 130, 'e13'); UPDATE evolved SET e = 'after rename' WHERE id = 3; DELETE FROM evolved WHERE id = 4",
      'ALTER TABLE keyless ADD PRIMARY KEY (k); ALTER TABLE keyless REPLICA IDENTITY DEFAULT',
      "UPDATE keyless SET v = 'uno' WHERE k = 1; DELETE FROM keyless WHERE k = 2; INSERT INTO keyless VALUES (3, 'three')",
    ];
    for (const step of steps) {
      if (step === 'CATCH UP') await pipeline.waitForCatchUp();
      else await env.pg.query(step);
    }
    await pipeline.waitForCatchUp();
  });
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');
  const path = pipeline.duckdbPath('main');
  const evolvedColumns = await columnsOf('evolved');
  t.deepEqual(evolvedColumns, ['id', 'a_renamed', 'b', 'd', 'e']);
  t.deepEqual(await duckdbRows(path, 'public.evolved', evolvedColumns), await postgresRows(env.pg, 'evolved', evolvedColumns));
  await t.throwsAsync(duckdbRows(path, 'public.evolving', ['id']), { message: /does not exist/ }, 'the old name is gone');
  await t.throwsAsync(duckdbRows(path, 'public.evolved', ['c']), { message: /"c"/ }, 'the dropped column is gone');
  t.deepEqual(await duckdbRows(path, 'public.keyless', ['k', 'v']), await postgresRows(env.pg, 'keyless', ['k', 'v']));
});
