import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { connectRedis } from '../../shared/redis.js';
import { waitFor } from './pipeline.js';
import { freePort, type RedisProcess, type RedisServer, spawnRedis } from './services.js';

/**
 * A master, a replica of it and one sentinel watching them (quorum 1), each on a free port,
 * reached as `redis-sentinel://…/pgr`. As a RedisServer, restart() and snapshot() act on
 * whichever server is the master now.
 */
export interface SentinelSet extends RedisServer {
  masterPort: () => Promise<number>;
  /** SENTINEL FAILOVER: the replica becomes the master; returns once the old master follows it. */
  failover: () => Promise<void>;
}

const MASTER = 'pgr';

export async function startSentinelSet(): Promise<SentinelSet> {
  const dir = mkdtempSync(join(tmpdir(), 'pgr-sentinel-'));
  const [firstPort, secondPort, sentinelPort] = [await freePort(), await freePort(), await freePort()];
  // Each server starts as a master and is made a replica by command, so that one restarted
  // from its snapshot comes back as it was before a failover, and the sentinel decides the rest.
  const servers = new Map<number, RedisProcess>();
  const launch = async (port: number) => {
    servers.set(port, await spawnRedis(port, ['--save', '', '--appendonly', 'no', '--dir', dir, '--dbfilename', `${port}.rdb`]));
  };
  await Promise.all([launch(firstPort), launch(secondPort)]);
  const direct = (port: number) => {
    const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true });
    client.on('error', () => {});
    return client;
  };
  const onPort = async <T>(port: number, use: (client: Redis) => Promise<T>): Promise<T> => {
    const client = direct(port);
    try {
      return await use(client);
    } finally {
      client.disconnect();
    }
  };
  await onPort(secondPort, (client) => client.replicaof('127.0.0.1', firstPort));
  const config = join(dir, 'sentinel.conf');
  writeFileSync(
    config,
    [
      `dir ${dir}`,
      `sentinel monitor ${MASTER} 127.0.0.1 ${firstPort} 1`,
      `sentinel down-after-milliseconds ${MASTER} 2000`,
      `sentinel failover-timeout ${MASTER} 10000`,
      '',
    ].join('\n'),
  );
  const sentinelServer = await spawnRedis(sentinelPort, [config, '--sentinel']);
  const sentinel = direct(sentinelPort);
  const masterPort = async () => Number(((await sentinel.call('SENTINEL', 'get-master-addr-by-name', MASTER)) as string[])[1]);
  const linked = (port: number) => onPort(port, async (client) => /master_link_status:up/.test(await client.info('replication')));
  await waitFor('the replica to be in sync and known to the sentinel', async () => {
    const replicas = (await sentinel.call('SENTINEL', 'replicas', MASTER)) as string[][];
    return replicas.length === 1 && (await linked(secondPort));
  });
  const url = `redis-sentinel://127.0.0.1:${sentinelPort}/${MASTER}`;
  const client = connectRedis(url);
  client.on('error', () => {});
  return {
    url,
    client,
    masterPort,
    failover: async () => {
      const before = await masterPort();
      await sentinel.call('SENTINEL', 'FAILOVER', MASTER);
      await waitFor('the sentinel to promote the replica', async () => (await masterPort()) !== before);
      // The old master follows the new one: a second failover could go back.
      await waitFor('the old master to follow the new one', async () => linked(before));
    },
    snapshot: async () => {
      await onPort(await masterPort(), (master) => master.save());
    },
    restart: async ({ fromSnapshot = false } = {}) => {
      const port = await masterPort();
      await servers.get(port)!.kill();
      if (!fromSnapshot) rmSync(join(dir, `${port}.rdb`), { force: true });
      await launch(port);
      // The replica syncs again from the master, whose data is now older than its own.
      const replica = port === firstPort ? secondPort : firstPort;
      await waitFor('the replica to follow the restarted master', async () => (await masterPort()) !== port || linked(replica));
    },
    stop: async () => {
      client.disconnect();
      sentinel.disconnect();
      for (const server of [...servers.values(), sentinelServer]) await server.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
