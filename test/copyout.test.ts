import test from 'ava';
import pg from 'pg';
import { type ChunkLimits, CopyOut } from '../producer/copyout.js';
import { COPY_CSV, COPY_CSV_OPTIONS, parseCsvRows } from '../shared/csv.js';
import { useServices } from './support/services.js';

const env = useServices(test);

async function copyAll(client: pg.Client, sql: string, limits?: ChunkLimits) {
  const copyOut = new CopyOut(`COPY (${sql}) TO STDOUT (${COPY_CSV_OPTIONS})`, limits);
  client.query(copyOut as never);
  const pieces: { csv: string; rows: number; endsChunk: boolean }[] = [];
  for await (const { data, rows, endsChunk } of copyOut) pieces.push({ csv: data.toString('utf8'), rows, endsChunk });
  return pieces;
}

/** The pieces' rows, grouped into the chunks the pieces end. */
function chunksOf(pieces: { csv: string; endsChunk: boolean }[]): string[][] {
  const chunks: string[][] = [[]];
  for (const piece of pieces) {
    chunks[chunks.length - 1].push(...parseCsvRows(piece.csv, COPY_CSV).map((row) => row.join(',')));
    if (piece.endsChunk) chunks.push([]);
  }
  return chunks;
}

test('COPY output is read as pieces of whole rows: rows are counted, rows split across reads are whole, the connection stays usable', async (t) => {
  // Rows of every size: empty and NULL values, quotes (both dialects') and newlines, multi-byte text, and rows
  // far larger than a socket read (up to 400 kB), which arrive split across reads.
  await env.pg.query(`CREATE TABLE tricky (id int, label text);
    INSERT INTO tricky SELECT g, CASE g % 4 WHEN 0 THEN 'a,"b"' || chr(10) || 'c' || chr(30) || chr(31) || chr(30) WHEN 1 THEN NULL WHEN 2 THEN '' ELSE repeat('é', g) END FROM generate_series(1, 3000) g;
    INSERT INTO tricky SELECT 3000 + g, repeat('x"', g * 20000) FROM generate_series(1, 10) g;`);
  const client = new pg.Client({ connectionString: env.pg.url });
  await client.connect();
  try {
    const expected = (await client.query('SELECT id::text AS id, label FROM tricky ORDER BY tricky.id')).rows.map((row) => [row.id, row.label]);
    const pieces = await copyAll(client, 'SELECT id, label FROM tricky ORDER BY id');
    t.deepEqual(pieces.flatMap((piece) => parseCsvRows(piece.csv, COPY_CSV)), expected);
    for (const piece of pieces) t.is(parseCsvRows(piece.csv, COPY_CSV).length, piece.rows, 'each piece holds whole rows, as many as it says');
    t.true(pieces.length > 10, 'the output arrives over many socket reads');
    t.true(pieces.some((piece) => piece.rows === 1 && piece.csv.length > 65536), 'a row larger than a read comes whole');
    t.deepEqual(await copyAll(client, 'SELECT 1 WHERE false'), [], 'no rows, no pieces');
    await t.throwsAsync(copyAll(client, 'SELECT no_such_column FROM tricky'), { message: /no_such_column/ });
    t.is((await client.query('SELECT 41 + 1 AS answer')).rows[0].answer, 42, 'the connection works after a copy and after a failed one');
  } finally {
    await client.end();
  }
});

test('COPY output is cut into chunks of exactly the rows asked for, or at the row that reaches a byte limit', async (t) => {
  await env.pg.query(`CREATE TABLE cut (id int, label text); INSERT INTO cut SELECT g, repeat('v', 1 + g % 50) FROM generate_series(1, 20000) g;`);
  const client = new pg.Client({ connectionString: env.pg.url });
  await client.connect();
  try {
    const all = (await client.query('SELECT id, label FROM cut ORDER BY id')).rows.map((row) => `${row.id},${row.label}`);
    const byRows = chunksOf(await copyAll(client, 'SELECT id, label FROM cut ORDER BY id', { rows: 3001, bytes: Infinity }));
    t.deepEqual(
      byRows.map((chunk) => chunk.length),
      [3001, 3001, 3001, 3001, 3001, 3001, 1994],
      'whatever the socket reads',
    );
    t.deepEqual(byRows.flat(), all, 'every row once, in order');
    const byBytes = chunksOf(await copyAll(client, 'SELECT id, label FROM cut ORDER BY id', { rows: Infinity, bytes: 50_000 }));
    t.deepEqual(byBytes.flat(), all);
    const size = (rows: string[]) => rows.reduce((sum, row) => sum + Buffer.byteLength(row) + 1, 0);
    for (const chunk of byBytes.slice(0, -1)) {
      t.true(size(chunk) >= 50_000 && size(chunk.slice(0, -1)) < 50_000, 'a chunk ends at the row that reaches the byte limit');
    }
  } finally {
    await client.end();
  }
});
