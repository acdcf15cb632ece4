import test from 'ava';
import pg from 'pg';
import { type ChunkLimits, CopyOut, recycle } from '../producer/copyout.js';
import { inPlaceSocket } from '../producer/wire.js';
import { COPY_TEXT_OPTIONS, parseCopyRows } from '../shared/csv.js';
import { useServices } from './support/services.js';

const env = useServices(test);

async function copyAll(client: pg.Client, sql: string, limits?: ChunkLimits) {
  const copyOut = new CopyOut(`COPY (${sql}) TO STDOUT (${COPY_TEXT_OPTIONS})`, limits);
  client.query(copyOut as never);
  const pieces: { csv: string; rows: number; endsChunk: boolean; bytes: number; longestRow: number; longestMeasured: number }[] = [];
  for await (const piece of copyOut) {
    pieces.push({
      csv: piece.data.toString('utf8'),
      rows: piece.rows,
      endsChunk: piece.endsChunk,
      bytes: piece.data.length,
      longestRow: piece.longestRow,
      longestMeasured: Math.max(...rowLengths(piece.data)),
    });
    // Its buffer is reused for later rows from here on: what was kept must not change.
    recycle(piece);
  }
  return pieces;
}

/** The byte length of each row of COPY text (each is a line: line breaks inside values are escaped). */
function rowLengths(text: Buffer): number[] {
  const lengths: number[] = [];
  for (let start = 0; start < text.length; ) {
    const end = text.indexOf(0x0a, start) + 1;
    lengths.push(end - start);
    start = end;
  }
  return lengths;
}

/** The pieces' rows, grouped into the chunks the pieces end. */
function chunksOf(pieces: { csv: string; endsChunk: boolean }[]): string[][] {
  const chunks: string[][] = [[]];
  for (const piece of pieces) {
    chunks[chunks.length - 1].push(...parseCopyRows(piece.csv).map((row) => row.join(',')));
    if (piece.endsChunk) chunks.push([]);
  }
  return chunks;
}

test('COPY output is read, in place, as pieces of whole rows: rows are counted, rows split across reads are whole, the connection stays usable', async (t) => {
  // Rows of every size: empty and NULL values, quotes, tabs, backslashes and newlines, multi-byte text, rows
  // far larger than a socket read (up to 400 kB), which arrive split across reads, and two larger than a piece (1 MiB).
  await env.pg.query(`CREATE TABLE tricky (id int, label text);
    INSERT INTO tricky SELECT g, CASE g % 4 WHEN 0 THEN 'a,"b"' || chr(10) || 'c' || chr(9) || E'\\\\N' || chr(13) || chr(8) WHEN 1 THEN NULL WHEN 2 THEN '' ELSE repeat('é', g) END FROM generate_series(1, 3000) g;
    INSERT INTO tricky SELECT 3000 + g, repeat('x"', g * 20000) FROM generate_series(1, 10) g;
    INSERT INTO tricky SELECT 3010 + g, repeat('y', 1100000 * g) FROM generate_series(1, 2) g;`);
  // The copy connections' socket: reads land in one reused buffer.
  const client = new pg.Client({ connectionString: env.pg.url, stream: inPlaceSocket });
  await client.connect();
  try {
    const expected = (await client.query('SELECT id::text AS id, label FROM tricky ORDER BY tricky.id')).rows.map((row) => [row.id, row.label]);
    const pieces = await copyAll(client, 'SELECT id, label FROM tricky ORDER BY id');
    t.deepEqual(
      pieces.flatMap((piece) => parseCopyRows(piece.csv)),
      expected,
    );
    for (const piece of pieces) {
      t.is(parseCopyRows(piece.csv).length, piece.rows, 'each piece holds whole rows, as many as it says');
      t.is(piece.longestRow, piece.longestMeasured, 'and knows its longest row');
      t.true(piece.bytes <= 1024 * 1024 || piece.rows === 1, 'pieces are gathered up to a megabyte; a larger row is a piece of its own');
    }
    t.true(pieces.filter((piece) => piece.rows === 1 && piece.bytes > 1024 * 1024).length === 2, 'rows larger than a piece come whole');
    // Cut into chunks right at the rows larger than a piece: the chunk ends with them.
    const cut = chunksOf(await copyAll(client, 'SELECT id, label FROM tricky ORDER BY id', { rows: 3011, bytes: Infinity }));
    t.deepEqual(
      cut.map((chunk) => chunk.length),
      [3011, 1],
    );
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
