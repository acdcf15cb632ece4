import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { killStrayProcesses, LOAD_SCHEMA, loadTablesIn, runCli, TestPipeline, writeLoad } from './support/pipeline.js';
import { type SentinelSet, startSentinelSet } from './support/sentinel.js';
import { type PostgresServer, startPostgres } from './support/services.js';

let pg: PostgresServer;
let sentinels: SentinelSet;
test.before(async () => {
  [pg, sentinels] = await Promise.all([startPostgres(), startSentinelSet()]);
});
test.after.always(async () => {
  await killStrayProcesses();
  await Promise.all([pg?.stop(), sentinels?.stop()]);
});

test('through Redis Sentinel, the master failed over twice mid-stream: the producer, the consumers and the CLI follow it, and both destinations equal Postgres', async (t) => {
  const redis = sentinels.client;
  const pipeline = new TestPipeline(pg, sentinels.url, 'sentinel', ['main', 'second']);
  await pg.query(LOAD_SCHEMA(pipeline.publication));
  const producer = pipeline.producer();
  const consumers = [pipeline.duckdb('main'), pipeline.duckdb('second')];
  try {
    await pipeline.waitForCopy(redis);
    const load = writeLoad(pg, 3000, 2);
    await sleep(1000);
    await sentinels.failover();
    await sleep(1500);
    await sentinels.failover();
    await load;
    await pipeline.waitForCatchUp();
    const status = await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', sentinels.url]);
    t.is(status.code, 0, status.stderr);
    t.regex(status.stdout, /destination main: ok/);
    t.is(producer.child.exitCode, null, 'the producer process never ended');
  } finally {
    await Promise.all([producer.stop(), ...consumers.map((consumer) => consumer.stop())]);
  }
  for (const name of ['main', 'second']) {
    const { duckdb, postgres } = await loadTablesIn(pg, pipeline.duckdbPath(name));
    t.deepEqual(duckdb, postgres, name);
  }
});

test('a malformed Redis URL is refused with the accepted forms, and an upper-case REDISS:// keeps TLS', async (t) => {
  const refused = await runCli(['status', '--pipeline', 'p', '--redis-url', 'redis-sentinel://127.0.0.1:1']);
  t.is(refused.code, 2);
  t.regex(refused.stderr, /redis-sentinel:\/\/HOST:PORT\[,HOST:PORT…\]\/MASTER/);
  const { parseRedisUrl } = await import('../shared/redistarget.js');
  t.deepEqual(parseRedisUrl('REDISS://:secret@cache:6380/2'), { kind: 'server', url: 'rediss://:secret@cache:6380/2' });
  t.like(parseRedisUrl('redis-sentinel://user:pw@a:26379,[::1]:26380/main/3?sentinelPassword=s'), {
    kind: 'sentinel',
    sentinels: [
      { host: 'a', port: 26379 },
      { host: '::1', port: 26380 },
    ],
    name: 'main',
    db: 3,
    username: 'user',
    password: 'pw',
    sentinelPassword: 's',
  });
});
