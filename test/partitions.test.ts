import test from 'ava';
import { duckdbRows, postgresRows, TestPipeline } from './support/pipeline.js';
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
