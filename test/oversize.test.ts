import test from 'ava';
import { Redis } from 'ioredis';
import { duckdbRows, killStrayProcesses, postgresRows, runCli, slotConfirmed, TestPipeline } from './support/pipeline.js';
import { freePort, type PostgresServer, spawnRedis, startPostgres } from './support/services.js';

/** A Redis that takes at most 1 MB in one value (proto-max-bulk-len; Redis' default is 512 MB). */
let pg: PostgresServer;
let redis: Redis;
let redisUrl: string;
let stopRedis: () => Promise<void>;
test.before(async () => {
  pg = await startPostgres();
  const port = await freePort();
  const server = await spawnRedis(port, ['--save', '', '--appendonly', 'no', '--proto-max-bulk-len', '1mb']);
  stopRedis = server.kill;
  redisUrl = `redis://127.0.0.1:${port}`;
  redis = new Redis(redisUrl);
});
test.after.always(async () => {
  await killStrayProcesses();
  redis?.disconnect();
  await stopRedis?.();
  await pg?.stop();
});

test('a value larger than Redis takes in one value stops the producer with exit 2 naming the table, column and size (copied or streamed), and nothing is skipped: raised, it arrives', async (t) => {
  const pipeline = new TestPipeline(pg, redisUrl, 'oversize', ['main']);
  await pg.query(`CREATE TABLE blobs (id int PRIMARY KEY, note text, body text);
    INSERT INTO blobs VALUES (1, 'small', 'x'), (2, 'large', repeat('y', 2000000));
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE blobs;`);
  const args = pipeline.producerArgs(['--max-batch-bytes', '500000']);
  const copied = await runCli(args);
  t.is(copied.code, 2, copied.stderr);
  t.regex(
    copied.stderr,
    /A copied row from public\.blobs is \d+ bytes \(column "body" alone 2000000 bytes\), more than Redis takes in one value .*CONFIG SET proto-max-bulk-len 2097152/,
  );

  await redis.config('SET', 'proto-max-bulk-len', '8mb');
  let producer = pipeline.producer(['--max-batch-bytes', '500000']);
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(redis);
    await pipeline.waitForCatchUp();
    await producer.stop();
    await redis.config('SET', 'proto-max-bulk-len', '1mb');
    const before = await slotConfirmed(pg, pipeline.slot);
    await pg.query("UPDATE blobs SET body = repeat('z', 3000000) WHERE id = 1; INSERT INTO blobs VALUES (3, 'after', 'w')");
    const streamed = await runCli(args);
    t.is(streamed.code, 2, streamed.stderr);
    t.regex(streamed.stderr, /An update streamed from public\.blobs is \d+ bytes \(column "body" alone 3000000 bytes\), more than Redis takes in one value/);
    t.is(await slotConfirmed(pg, pipeline.slot), before, 'the slot did not pass the change');

    await redis.config('SET', 'proto-max-bulk-len', '8mb');
    producer = pipeline.producer(['--max-batch-bytes', '500000']);
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  const columns = ['id', 'note', 'md5(body)'];
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.blobs', columns), await postgresRows(pg, 'blobs', columns));
});
