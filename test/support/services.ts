import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pg from 'pg';
import { killStrayProcesses } from './pipeline.js';

/**
 * Real services for the tests: our own Postgres cluster (wal_level=logical) and our own
 * redis-server, on free ports, never the system's. PG_URL / REDIS_URL, when set, are used
 * instead (each test file then gets its own database; the Redis is flushed by some tests).
 */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

function postgresBinDir(): string {
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) throw new Error('no Postgres server binaries in /usr/lib/postgresql: install postgresql (see .ci/run) or set PG_URL');
  const version = readdirSync(base).sort((a, b) => Number(b) - Number(a))[0];
  return join(base, version, 'bin');
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
  restart: (mode: 'fast' | 'immediate') => void;
  /** The server down (`fast` shutdown) until start(). */
  shutdown: () => void;
  start: () => void;
}

export async function startPostgres(options: { walLevel?: 'logical' | 'replica' } = {}): Promise<PostgresServer> {
  if (process.env.PG_URL && !options.walLevel) return useDatabase(process.env.PG_URL);
  const bin = postgresBinDir();
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
  const port = await freePort();
  const settings = [
    `-p ${port}`,
    '-c listen_addresses=127.0.0.1',
    `-c unix_socket_directories=${dir}`,
    `-c wal_level=${options.walLevel ?? 'logical'}`,
    '-c max_replication_slots=20',
    '-c max_wal_senders=20',
    '-c fsync=off',
    '-c synchronous_commit=off',
    '-c full_page_writes=off',
    '-c shared_buffers=128MB',
    '-c max_connections=200',
  ].join(' ');
  const start = () => run('pg_ctl', ['-D', data, '-o', settings, '-l', join(dir, 'log'), '-w', 'start']);
  start();
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const server = await useDatabase(url, false);
  return {
    ...server,
    control: {
      restart: (mode) => run('pg_ctl', ['-D', data, '-o', settings, '-l', join(dir, 'log'), '-m', mode, '-w', 'restart']),
      shutdown: () => run('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']),
      start,
    },
    stop: async () => {
      await server.stop();
      try {
        run('pg_ctl', ['-D', data, '-m', 'immediate', 'stop']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
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

/** A redis-server (or, with `--sentinel` among the arguments, a sentinel) on the port, once it answers PING. */
export async function spawnRedis(port: number, args: string[]): Promise<ChildProcess> {
  // In a directory of its own: a replica's full sync writes the master's RDB file where it runs.
  const server = spawn('redis-server', [...args, '--port', String(port), '--bind', '127.0.0.1'], {
    stdio: 'ignore',
    cwd: mkdtempSync(join(tmpdir(), 'pgr-redis-run-')),
  });
  for (let i = 0; i < 100; i++) {
    const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null });
    probe.on('error', () => {});
    try {
      await probe.connect();
      await probe.ping();
      probe.disconnect();
      return server;
    } catch {
      probe.disconnect();
      await sleep(50);
    }
  }
  server.kill('SIGKILL');
  throw new Error(`redis-server ${args.join(' ')} did not start`);
}

export async function startRedis(): Promise<RedisServer> {
  if (process.env.REDIS_URL) {
    const client = new Redis(process.env.REDIS_URL);
    return {
      url: process.env.REDIS_URL,
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
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'pgr-redis-'));
  let server: ChildProcess;
  const launch = async () => {
    server = await spawnRedis(port, ['--save', '', '--appendonly', 'no', '--dir', dir]);
  };
  await launch();
  const url = `redis://127.0.0.1:${port}`;
  const client = new Redis(url, { maxRetriesPerRequest: null });
  client.on('error', () => {});
  const exited = () => new Promise((resolve) => (server.exitCode !== null ? resolve(null) : server.once('exit', resolve)));
  return {
    url,
    client,
    restart: async ({ fromSnapshot = false } = {}) => {
      server.kill('SIGKILL');
      await exited();
      if (!fromSnapshot) rmSync(join(dir, 'dump.rdb'), { force: true });
      await launch();
    },
    snapshot: async () => {
      await client.save();
    },
    stop: async () => {
      client.disconnect();
      server.kill('SIGKILL');
      await exited();
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
