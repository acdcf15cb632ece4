import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pg from 'pg';
import { startPostgresContainer, startRedisProcessContainer } from './containers.js';
import { killStrayProcesses } from './pipeline.js';
import { sourceOf } from './sources.js';

/**
 * Real services for the tests: our own Postgres cluster (wal_level=logical) and our own
 * redis-server, on free ports, never the system's. PG_URL / REDIS_URL, when set, are used
 * instead (each test file then gets its own database; the Redis is flushed by some tests).
 */
export async function freePort(): Promise<number> {
  const [low, high] = portsOutsideTheEphemeralRange();
  for (;;) {
    const port = low + Math.floor(Math.random() * (high - low));
    if (reservePort(port) && (await isFree(port))) return port;
  }
}

/**
 * Ports below the kernel's ephemeral range, which it never hands to a bind to port 0 (the
 * BigQuery emulator's, a client's): a port chosen from that range by one test file was taken
 * by another file's server before the process it was chosen for could bind it.
 */
function portsOutsideTheEphemeralRange(): [number, number] {
  let start = 32_768;
  try {
    start = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').split(/\s+/)[0]);
  } catch {
    // Not Linux: the range IANA suggests starts higher still.
  }
  const high = Number.isInteger(start) && start > 12_000 ? start : 32_768;
  return [high - 10_000, high];
}

/** Claims the port for this run across test files (processes and worker threads alike): a file created exclusively, reused after an hour. */
function reservePort(port: number): boolean {
  const dir = join(tmpdir(), 'pgr-test-ports');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, String(port));
  try {
    writeFileSync(path, String(process.pid), { flag: 'wx' });
    return true;
  } catch {
    try {
      if (Date.now() - statSync(path).mtimeMs < 3_600_000) return false;
      writeFileSync(path, String(process.pid));
      return true;
    } catch {
      return false;
    }
  }
}

async function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * `start` on a port free a moment ago, again on another if it fails: a port is only reserved
 * once the server binds it, and test files start their servers at the same time (a Redis of one
 * file found its port taken once in CI).
 */
async function onFreePort<T>(start: (port: number) => Promise<T>, attempts = 3): Promise<{ port: number; server: T }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      return { port, server: await start(port) };
    } catch (error) {
      if (attempt === attempts) throw error;
    }
  }
}

export interface PostgresServer {
  url: string;
  query: (sql: string, params?: unknown[]) => Promise<pg.QueryResult>;
  stop: () => Promise<void>;
  /** Our own cluster only (not with PG_URL): stops and starts the server, keeping its data. */
  control?: PostgresControl;
}

export interface PostgresControl {
  /** pg_ctl restart: `fast` disconnects clients cleanly, `immediate` is a crash (recovery on start). */
  restart: (mode: 'fast' | 'immediate') => Promise<void>;
  /** The server down (`fast` shutdown) until start(). */
  shutdown: () => Promise<void>;
  start: () => Promise<void>;
  /** Puts lines at the top of pg_hba.conf and reloads it. */
  prependHba: (lines: string) => Promise<void>;
  /** A hot standby streaming from this cluster (pg_basebackup), a cluster of the machine's binaries only. */
  standby?: () => Promise<PostgresServer>;
}

export async function startPostgres(options: { walLevel?: 'logical' | 'replica' } = {}): Promise<PostgresServer> {
  const source = await sourceOf('postgres', options.walLevel ? undefined : process.env.PG_URL);
  if (source.kind === 'url') return useDatabase(source.url);
  const settings = [
    '-c listen_addresses=127.0.0.1',
    `-c wal_level=${options.walLevel ?? 'logical'}`,
    '-c max_replication_slots=20',
    '-c max_wal_senders=20',
    '-c fsync=off',
    '-c synchronous_commit=off',
    '-c full_page_writes=off',
    '-c shared_buffers=128MB',
    '-c max_connections=200',
    '-c max_prepared_transactions=10',
  ];
  const { port, control, stop } =
    source.kind === 'containers' ? await postgresInContainer(await freePort(), settings) : await postgresFromBinaries(source.path, settings);
  const server = await useDatabase(`postgres://postgres@127.0.0.1:${port}/postgres`, false);
  const reload = async (lines: string) => {
    await control.prependHba(lines);
    await server.query('SELECT pg_reload_conf()');
  };
  return {
    ...server,
    control: { ...control, prependHba: reload },
    stop: async () => {
      await server.stop();
      await stop();
    },
  };
}

/**
 * A cluster of our own from the machine's binaries (initdb into a temporary directory), run as
 * `postgres` when we are root, on a port chosen once initdb is done (see onFreePort).
 */
async function postgresFromBinaries(found: string, settings: string[]): Promise<{ port: number; control: PostgresControl; stop: () => Promise<void> }> {
  // Where initdb really is: a directory on the PATH may link to it, and not to its siblings (pg_basebackup).
  const bin = dirname(realpathSync(join(found, 'initdb')));
  const dir = mkdtempSync(join(tmpdir(), 'pgr-pg-'));
  chmodSync(dir, 0o755);
  const asPostgres = process.getuid?.() === 0;
  const postgresUser = asPostgres ? Number(execFileSync('id', ['-u', 'postgres']).toString().trim()) : undefined;
  const postgresGroup = asPostgres ? Number(execFileSync('id', ['-g', 'postgres']).toString().trim()) : undefined;
  if (postgresUser !== undefined) chownSync(dir, postgresUser, postgresGroup!);
  const run = (command: string, args: string[]) =>
    asPostgres
      ? execFileSync('runuser', ['-u', 'postgres', '--', join(bin, command), ...args], { stdio: 'pipe' })
      : execFileSync(join(bin, command), args, { stdio: 'pipe' });
  const data = join(dir, 'data');
  run('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale', 'C']);
  const optionsOn = (port: number) => [`-p ${port}`, `-c unix_socket_directories=${dir}`, ...settings].join(' ');
  const startOn = async (port: number) => void run('pg_ctl', ['-D', data, '-o', optionsOn(port), '-l', join(dir, 'log'), '-w', 'start']);
  const { port } = await onFreePort(startOn);
  const options = optionsOn(port);
  const start = () => startOn(port);
  const standby = async (): Promise<PostgresServer> => {
    const standbyData = join(dir, `standby-${randomUUID()}`);
    run('pg_basebackup', ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-D', standbyData, '-R', '--no-sync']);
    const startStandby = async (standbyPort: number) =>
      void run('pg_ctl', ['-D', standbyData, '-o', optionsOn(standbyPort), '-l', `${standbyData}.log`, '-w', 'start']);
    const { port: standbyPort } = await onFreePort(startStandby);
    const server = await useDatabase(`postgres://postgres@127.0.0.1:${standbyPort}/postgres`, false);
    return {
      ...server,
      stop: async () => {
        await server.stop();
        run('pg_ctl', ['-D', standbyData, '-m', 'immediate', 'stop']);
      },
    };
  };
  return {
    port,
    control: {
      standby,
      restart: async (mode) => void run('pg_ctl', ['-D', data, '-o', options, '-l', join(dir, 'log'), '-m', mode, '-w', 'restart']),
      shutdown: async () => void run('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']),
      start,
      prependHba: async (lines) => writeFileSync(join(data, 'pg_hba.conf'), lines + readFileSync(join(data, 'pg_hba.conf'), 'utf8')),
    },
    stop: async () => {
      try {
        run('pg_ctl', ['-D', data, '-m', 'immediate', 'stop']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** A cluster in a container: restarts and starts return once it accepts connections again, as pg_ctl -w does. */
async function postgresInContainer(port: number, settings: string[]): Promise<{ port: number; control: PostgresControl; stop: () => Promise<void> }> {
  const container = await startPostgresContainer(port, settings);
  const accepting = () => waitUntilAccepting(`postgres://postgres@127.0.0.1:${port}/postgres`);
  return {
    port,
    control: {
      restart: async (mode) => {
        await container.restart(mode);
        await accepting();
      },
      shutdown: container.shutdown,
      start: async () => {
        await container.start();
        await accepting();
      },
      prependHba: container.prependHba,
    },
    stop: container.stop,
  };
}

async function waitUntilAccepting(url: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const client = new pg.Client({ connectionString: url });
    try {
      await client.connect();
      await client.end();
      return;
    } catch (error) {
      await client.end().catch(() => {});
      if (attempt > 600) throw error;
      await sleep(100);
    }
  }
}

/** With an external server, each test file gets a database of its own. */
async function useDatabase(url: string, createOwn = true): Promise<PostgresServer> {
  let target = url;
  if (createOwn) {
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    const name = `pgr_test_${process.pid}_${Math.floor(Math.random() * 1e6)}`;
    await admin.query(`CREATE DATABASE ${name}`);
    await admin.end();
    const parsed = new URL(url);
    parsed.pathname = `/${name}`;
    target = parsed.toString();
  }
  const pool = new pg.Pool({ connectionString: target, max: 4 });
  // An idle client whose server restarted (tests that restart it) is dropped, not thrown.
  pool.on('error', () => {});
  return {
    url: target,
    query: (sql, params) => pool.query(sql, params as unknown[]),
    stop: async () => {
      await pool.end();
    },
  };
}

export interface RedisServer {
  url: string;
  client: Redis;
  /**
   * Kills the server (kill -9) and starts it again on the same port: empty, or with the data of
   * the last snapshot() — what a restart from an older RDB file, or a failover to a replica
   * that lagged, leaves: every write since is lost.
   */
  restart: (options?: { fromSnapshot?: boolean }) => Promise<void>;
  /** Writes the server's data to its RDB file now (SAVE). */
  snapshot: () => Promise<void>;
  stop: () => Promise<void>;
}

/** A Redis server of a test's own, apart from the one useServices starts. */
export interface RedisProcess {
  /** Ends it at once, as kill -9 does; resolves once it is gone. */
  kill: () => Promise<void>;
}

/**
 * A redis-server (or, with `--sentinel` among the arguments, a sentinel) with these arguments on
 * the port, once it answers PING: a container when the tests' Redis comes from containers,
 * else the machine's binary.
 */
export async function spawnRedis(port: number, args: string[]): Promise<RedisProcess> {
  const source = await sourceOf('redis', undefined);
  if (source.kind === 'containers') return startRedisProcessContainer(port, args);
  // In a directory of its own: a replica's full sync writes the master's RDB file where it runs.
  const server = spawn(source.kind === 'binaries' ? source.path : 'redis-server', [...args, '--port', String(port), '--bind', '127.0.0.1'], {
    stdio: 'ignore',
    cwd: mkdtempSync(join(tmpdir(), 'pgr-redis-run-')),
  });
  const kill = async () => {
    if (server.exitCode !== null || server.signalCode !== null) return;
    const exited = new Promise((resolve) => server.once('exit', resolve));
    server.kill('SIGKILL');
    await exited;
  };
  for (let i = 0; i < 100; i++) {
    if (server.exitCode !== null || server.signalCode !== null) throw new Error(`redis-server ${args.join(' ')} exited at start: port ${port} taken?`);
    // The Redis answering must be this one, not another test file's that took the port first.
    const pid = await answeringRedisPid(port);
    if (pid === server.pid) return { kill };
    if (pid !== undefined) {
      await kill();
      throw new Error(`port ${port} answers for another Redis`);
    }
    await sleep(50);
  }
  await kill();
  throw new Error(`redis-server ${args.join(' ')} did not start`);
}

/** The process id of the Redis answering on the port, if one does. */
async function answeringRedisPid(port: number): Promise<number | undefined> {
  const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null });
  probe.on('error', () => {});
  try {
    await probe.connect();
    return Number(/process_id:(\d+)/.exec(await probe.info('server'))?.[1]);
  } catch {
    return undefined;
  } finally {
    probe.disconnect();
  }
}

export async function startRedis(): Promise<RedisServer> {
  const source = await sourceOf('redis', process.env.REDIS_URL);
  if (source.kind === 'url') {
    const client = new Redis(source.url);
    return {
      url: source.url,
      client,
      restart: async () => {
        throw new Error('cannot restart an external Redis (REDIS_URL)');
      },
      snapshot: async () => {
        throw new Error('cannot snapshot an external Redis (REDIS_URL)');
      },
      stop: async () => client.disconnect(),
    };
  }
  const dir = mkdtempSync(join(tmpdir(), 'pgr-redis-'));
  const { port, server: first } = await onFreePort((port) => spawnRedis(port, ['--save', '', '--appendonly', 'no', '--dir', dir]));
  let server = first;
  const url = `redis://127.0.0.1:${port}`;
  const client = new Redis(url, { maxRetriesPerRequest: null });
  client.on('error', () => {});
  return {
    url,
    client,
    restart: async ({ fromSnapshot = false } = {}) => {
      await server.kill();
      if (!fromSnapshot) rmSync(join(dir, 'dump.rdb'), { force: true });
      server = await spawnRedis(port, ['--save', '', '--appendonly', 'no', '--dir', dir]);
    },
    snapshot: async () => {
      await client.save();
    },
    stop: async () => {
      client.disconnect();
      await server.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Starts a Postgres and a Redis for one test file, and stops them after it. */
export function useServices(test: { before: (fn: () => Promise<void>) => void; after: { always: (fn: () => Promise<void>) => void } }): {
  pg: PostgresServer;
  redis: RedisServer;
} {
  const services = {} as { pg: PostgresServer; redis: RedisServer };
  test.before(async () => {
    [services.pg, services.redis] = await Promise.all([startPostgres(), startRedis()]);
  });
  test.after.always(async () => {
    await killStrayProcesses();
    await Promise.all([services.pg?.stop(), services.redis?.stop()]);
  });
  return services;
}
