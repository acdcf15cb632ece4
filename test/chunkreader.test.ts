import { randomBytes } from 'node:crypto';
import test from 'ava';
import { Redis } from 'ioredis';
import { ChunkReader, ReplyParser } from '../consumers/chunkreader.js';
import { PIECE_BYTES } from '../shared/chunks.js';
import { type RedisServer, startRedis } from './support/services.js';

let redis: RedisServer;
test.before(async () => {
  redis = await startRedis();
});
test.after.always(async () => {
  await redis?.stop();
});

/** Pieces of awkward sizes with CR LF inside: headers and the bytes after them fall across socket reads. */
function piecesOf(sizes: number[]): Buffer[] {
  return sizes.map((size) => {
    const piece = randomBytes(size);
    for (let at = 0; at + 1 < size; at += 997) piece.write('\r\n', at, 'latin1');
    return piece;
  });
}

test('the chunk reader returns every piece of a chunk byte for byte, pipelined reads in order, and reuses recycled buffers', async (t) => {
  const reader = new ChunkReader(redis.url);
  try {
    const sizes = [0, 1, 2, 3, PIECE_BYTES, PIECE_BYTES + 4321, ...Array.from({ length: 120 }, (_, index) => (index * 7919) % 300_000)];
    const chunks = [piecesOf(sizes), piecesOf([5, 262_144, 262_143, 262_145]), piecesOf([PIECE_BYTES - 1, 17])];
    for (const [index, pieces] of chunks.entries()) await redis.client.rpush(`reader:test:${index}`, ...pieces);
    await redis.client.set('reader:test:string', 'not a list');

    const read = await Promise.all([...chunks.keys()].map((index) => reader.read(`reader:test:${index}`)));
    for (const [index, pieces] of read.entries()) t.deepEqual(pieces, chunks[index], `chunk ${index}`);
    t.is(await reader.read('reader:test:missing'), undefined, 'a chunk Redis no longer holds');
    await t.throwsAsync(reader.read('reader:test:string'), { message: /WRONGTYPE/ });

    // Back in the pool, the buffers hold the next chunk read (and only it).
    const used = new Set(read[0]!.map((piece) => piece.buffer));
    reader.recycle(read[0]!);
    reader.recycle(read[0]!);
    const again = await Promise.all([reader.read('reader:test:1'), reader.read('reader:test:2')]);
    t.deepEqual(again, [chunks[1], chunks[2]]);
    const reused = again.flat().filter((piece) => used.has(piece!.buffer));
    t.is(reused.length, 6, 'every piece that fits a pooled buffer got one');
    t.is(new Set(reused.map((piece) => piece!.buffer)).size, reused.length, 'no buffer is handed out twice');
  } finally {
    reader.close();
  }
});

test('the chunk reader signs in as the URL says, in its database, keeps the password out of errors, and reconnects after losing its connection', async (t) => {
  const { port } = new URL(redis.url);
  await redis.client.call('ACL', 'SETUSER', 'chunkreader', 'on', '>s3cret-pw', '~*', '+@all');
  const admin = new Redis(redis.url, { db: 3 });
  const reader = new ChunkReader(`redis://chunkreader:s3cret-pw@127.0.0.1:${port}/3`);
  try {
    const pieces = piecesOf([10, 20_000]);
    await admin.rpush('reader:db3', ...pieces);
    t.deepEqual(await reader.read('reader:db3'), pieces, 'read from database 3 as that user');

    const wrong = new ChunkReader(`redis://chunkreader:wrong-pw@127.0.0.1:${port}/3`);
    const error = await t.throwsAsync(wrong.read('reader:db3'), { message: /WRONGPASS/ });
    t.false(error!.message.includes('wrong-pw'), 'no password in the error');
    wrong.close();

    await redis.client.call('CLIENT', 'KILL', 'USER', 'chunkreader');
    // The read that finds the connection gone fails (the runner retries its batch); the next one reconnects.
    const first = await reader.read('reader:db3').catch((failure: Error) => failure);
    if (first instanceof Error) t.regex(first.message, /lost the connection to Redis/);
    else t.deepEqual(first, pieces);
    t.deepEqual(await reader.read('reader:db3'), pieces);
  } finally {
    reader.close();
    admin.disconnect();
  }
});

test('replies parse the same fed a byte at a time: split headers, split bulk strings, split CR LF', (t) => {
  const replies: unknown[] = [];
  const parser = new ReplyParser(
    (size) => Buffer.alloc(size),
    (reply) => replies.push(reply),
  );
  const wire = Buffer.concat([
    Buffer.from('+OK\r\n:42\r\n*0\r\n*-1\r\n$-1\r\n-ERR bad thing\r\n*3\r\n$3\r\nab\n\r\n$0\r\n\r\n$12\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n'),
    Buffer.from('$5\r\nhello\r\n'),
  ]);
  for (let at = 0; at < wire.length; at++) parser.feed(wire.subarray(at, at + 1));
  t.deepEqual(replies.slice(0, 5), ['OK', 42, [], null, null]);
  t.true(replies[5] instanceof Error && /ERR bad thing/.test(replies[5].message));
  t.deepEqual(replies.slice(6), [[Buffer.from('ab\n'), Buffer.alloc(0), Buffer.from('\r\n'.repeat(6))], [Buffer.from('hello')]]);
});
