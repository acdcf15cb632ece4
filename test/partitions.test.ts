import test from 'ava';
import { duckdbRows, postgresRows, TestPipeline, waitFor } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

const COLUMNS = ['id', 'region', 'note'];

/**
 * A partitioned table published either way Postgres offers: as its partitions (the default),
 * which arrive as tables of their own, or through its root (publish_via_partition_root), which
 * arrives as one table. Rows moved between partitions, and a partition attached mid-stream.
 */
for (const viaRoot of [false, true]) {
  test(`a partitioned table published ${viaRoot ? 'through its root' : 'as its partitions'}: copied, then changes (rows moving between partitions, a partition created mid-stream) equal Postgres`, async (t) => {
    const pipeline = new TestPipeline(env.pg, env.redis.url, viaRoot ? 'partroot' : 'partleaf', ['main']);
    const table = viaRoot ? 'sales_r' : 'sales_l';
    await env.pg.query(`
      CREATE TABLE ${table} (id int, region text, note text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
      CREATE TABLE ${table}_eu PARTITION OF ${table} FOR VALUES IN ('eu');
      CREATE TABLE ${table}_us PARTITION OF ${table} FOR VALUES IN ('us');
      INSERT INTO ${table} SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'n' || g FROM generate_series(1, 2000) g;
      CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${table} WITH (publish_via_partition_root = ${viaRoot});
    `);
    await pipeline.runWithDuckdb(env.redis.client, async () => {
      await env.pg.query(`
        INSERT INTO ${table} SELECT g, 'eu', 'new' FROM generate_series(2001, 2200) g;
        UPDATE ${table} SET note = 'updated' WHERE id <= 20;
        UPDATE ${table} SET region = 'us' WHERE id BETWEEN 100 AND 140 AND region = 'eu';
        DELETE FROM ${table} WHERE id BETWEEN 300 AND 350;
        CREATE TABLE ${table}_asia PARTITION OF ${table} FOR VALUES IN ('asia');
        INSERT INTO ${table} VALUES (5000, 'asia', 'new partition');
        UPDATE ${table} SET region = 'asia' WHERE id = 7;
      `);
      await pipeline.waitForCatchUp();
    });
    const path = pipeline.duckdbPath('main');
    const parts = viaRoot ? [table] : [`${table}_eu`, `${table}_us`, `${table}_asia`];
    const copied = (await Promise.all(parts.map((part) => duckdbRows(path, `public.${part}`, COLUMNS)))).flat().sort();
    t.deepEqual(copied, await postgresRows(env.pg, table, COLUMNS));
    if (!viaRoot) t.deepEqual(await duckdbRows(path, `public.${table}_asia`, COLUMNS), await postgresRows(env.pg, `${table}_asia`, COLUMNS));
  });
}

/**
 * publish_via_partition_root changed on a running pipeline: Postgres then publishes the rows
 * under the other tables of the partition tree. Those are copied afresh and follow Postgres;
 * the ones left behind are named in a warning (the destination keeps them as they were).
 */
test('publish_via_partition_root turned on, then off, mid-run: the tables that now carry the rows are copied and equal Postgres; those left behind are named', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'parttoggle', ['main']);
  await env.pg.query(`
    CREATE TABLE toggled (id int, region text, note text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
    CREATE TABLE toggled_eu PARTITION OF toggled FOR VALUES IN ('eu');
    CREATE TABLE toggled_us PARTITION OF toggled FOR VALUES IN ('us');
    INSERT INTO toggled SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'n' || g FROM generate_series(1, 400) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE toggled WITH (publish_via_partition_root = false);`);
  const path = pipeline.duckdbPath('main');
  const leaves = async () => (await Promise.all(['toggled_eu', 'toggled_us'].map((part) => duckdbRows(path, `public.${part}`, COLUMNS)))).flat().sort();
  const producer = pipeline.producer();
  let consumer = pipeline.duckdb('main');
  // The switch is noticed (the warning) and the tables now carrying the rows copied; a change
  // made after the copy is applied; the consumer stops so that its DuckDB file can be read.
  const switchTo = async (viaRoot: boolean, round: number): Promise<string[]> => {
    const from = producer.stderr.length;
    await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} SET (publish_via_partition_root = ${viaRoot})`);
    await env.pg.query(`
      UPDATE toggled SET note = 'switched ${round}' WHERE id % 7 = 0;
      DELETE FROM toggled WHERE id % 50 = ${round};
      INSERT INTO toggled VALUES (${1000 + round}, 'eu', 'new');`);
    await waitFor('the switch to be noticed and the tables copied', async () => {
      pipeline.assertRunning();
      const log = producer.stderr.slice(from);
      return /publish_via_partition_root was changed/.test(log) && (log.match(/table sync: copy enqueued/g)?.length ?? 0) >= (viaRoot ? 1 : 2);
    });
    await env.pg.query(`UPDATE toggled SET note = 'after ${round}' WHERE id = 4`);
    await pipeline.waitForCatchUp();
    await consumer.stop();
    const warning = producer.stderr
      .slice(from)
      .split('\n')
      .find((line) => line.includes('publish_via_partition_root was changed'));
    return JSON.parse(warning!).tables;
  };
  try {
    await pipeline.waitForCopy(env.redis.client);
    t.deepEqual(await switchTo(true, 1), ['toggled_eu', 'toggled_us']);
    const whileOn = await postgresRows(env.pg, 'toggled', COLUMNS);
    t.deepEqual(await duckdbRows(path, 'public.toggled', COLUMNS), whileOn);
    consumer = pipeline.duckdb('main');
    t.deepEqual(await switchTo(false, 2), ['toggled']);
    t.deepEqual(await leaves(), await postgresRows(env.pg, 'toggled', COLUMNS));
    // The root's table is left as it was when the partitions took over.
    t.deepEqual(await duckdbRows(path, 'public.toggled', COLUMNS), whileOn);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
});
