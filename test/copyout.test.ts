import test from 'ava';
import pg from 'pg';
import { CopyOut } from '../producer/copyout.js';
import { parseCsvRows } from '../shared/csv.js';
import { useServices } from './support/services.js';

const env = useServices(test);

async function copyAll(client: pg.Client, sql: string, chunkBytes: number, chunkRows: number) {
  const copyOut = new CopyOut(`COPY (${sql}) TO STDOUT (FORMAT csv)`, chunkBytes, chunkRows);
  client.query(copyOut as never);
  const chunks: { csv: string; rows: number }[] = [];
  for await (const { data, rows } of copyOut) chunks.push({ csv: data.toString('utf8'), rows });
  return chunks;
}

test('COPY output is read a row per message: chunks end on rows, rows are counted, the connection stays usable', async (t) => {
  await env.pg.query(`CREATE TABLE tricky (id int, label text);
    INSERT INTO tricky SELECT g, CASE g % 4 WHEN 0 THEN 'a,"b"' || chr(10) || 'c' WHEN 1 THEN NULL WHEN 2 THEN '' ELSE repeat('é', g) END FROM generate_series(1, 3000) g;`);
  const client = new pg.Client({ connectionString: env.pg.url });
  await client.connect();
  try {
    const expected = (await client.query('SELECT id::text AS id, label FROM tricky ORDER BY tricky.id')).rows.map((row) => [row.id, row.label]);
    for (const [chunkBytes, chunkRows] of [[64, 1_000_000], [100_000, 7], [1 << 20, 1_000_000]]) {
      const chunks = await copyAll(client, 'SELECT id, label FROM tricky ORDER BY id', chunkBytes, chunkRows);
      t.deepEqual(chunks.flatMap((chunk) => parseCsvRows(chunk.csv)), expected, `chunks of ${chunkBytes} bytes / ${chunkRows} rows`);
      for (const chunk of chunks) t.is(parseCsvRows(chunk.csv).length, chunk.rows);
      if (chunkRows === 7) t.true(chunks.every((chunk) => chunk.rows <= 7));
    }
    t.deepEqual(await copyAll(client, 'SELECT 1 WHERE false', 1024, 10), [], 'no rows, no chunks');
    await t.throwsAsync(copyAll(client, 'SELECT no_such_column FROM tricky', 1024, 10), { message: /no_such_column/ });
    t.is((await client.query('SELECT 41 + 1 AS answer')).rows[0].answer, 42, 'the connection works after a copy and after a failed one');
  } finally {
    await client.end();
  }
});
