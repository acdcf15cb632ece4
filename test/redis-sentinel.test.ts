import test from 'ava';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { connectRedis } from '../shared/redis.js';
import { LOAD_SCHEMA, TestPipeline, loadTablesIn, runCli, waitFor, writeLoad } from './support/pipeline.js';
import { freePort, spawnRedis, startPostgres, type PostgresServer } from './support/services.js';

/** A master, a replica of it and one sentinel watching them (quorum 1), each on a free port. */
interface SentinelSet {
  url: string;
  masterPort: () => Promise<number>;
  failover: () => Promise<void>;
  stop: () => Promise<void>;
}

async function startSentinelSet(): Promise<SentinelSet> {
  const dir = mkdtempSync(join(tmpdir(), 'pgr-sentinel-'));
  const [masterPort, replicaPort, sentinelPort] = [await freePort(), await freePort(), await freePort()];
  const servers: ChildProcess[] = [];
  servers.push(await spawnRedis(masterPort, ['--save', '', '--appendonly', 'no']));
  servers.push(await spawnRedis(replicaPort, ['--save', '', '--appendonly', 'no', '--replicaof', '127.0.0.1', String(masterPort)]));
  const config = join(dir, 'sentinel.conf');
  writeFileSync(config, [`dir ${dir}`, `sentinel monitor pgr 127.0.0.1 ${masterPort} 1`, 'sentinel down-after-milliseconds pgr 2000', 'sentinel failover-timeout pgr 10000', ''].join('\n'));
  servers.push(await spawnRedis(sentinelPort, [config, '--sentinel']));
  const sentinel = new Redis({ port: sentinelPort, host: '127.0.0.1' });
  sentinel.on('error', () => {});
  const masterPortNow = async () => Number(((await sentinel.call('SENTINEL', 'get-master-addr-by-name', 'pgr')) as string[])[1]);
  const replicaLinked = async (port: number) => {
    const replica = new Redis({ port, host: '127.0.0.1' });
    try {
      return /master_link_status:up/.test(await replica.info('replication'));
    } finally {
      replica.disconnect();
    }
  };
  await waitFor('the replica to be in sync and known to the sentinel', async () => {
    const replicas = (await sentinel.call('SENTINEL', 'replicas', 'pgr')) as string[][];
    return replicas.length === 1 && (await replicaLinked(replicaPort));
  });
  return {
    url: `redis-sentinel://127.0.0.1:${sentinelPort}/pgr`,
    masterPort: masterPortNow,
    failover: async () => {
      const before = await masterPortNow();
      await sentinel.call('SENTINEL', 'FAILOVER', 'pgr');
      await waitFor('the sentinel to promote the replica', async () => (await masterPortNow()) !== before);
      // The old master follows the new one: a second failover could go back.
      await waitFor('the old master to follow the new one', async () => replicaLinked(before));
    },
    stop: async () => {
      sentinel.disconnect();
      for (const server of servers) server.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

let pg: PostgresServer;
let sentinels: SentinelSet;
test.before(async () => {
  [pg, sentinels] = await Promise.all([startPostgres(), startSentinelSet()]);
});
test.after.always(async () => {
  await Promise.all([pg?.stop(), sentinels?.stop()]);
});

test('through Redis Sentinel, the master failed over twice mid-stream: the producer, the consumers and the CLI follow it, and both destinations equal Postgres', async (t) => {
  const redis = connectRedis(sentinels.url);
  redis.on('error', () => {});
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
    redis.disconnect();
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
    sentinels: [{ host: 'a', port: 26379 }, { host: '::1', port: 26380 }],
    name: 'main',
    db: 3,
    username: 'user',
    password: 'pw',
    sentinelPassword: 's',
  });
});
