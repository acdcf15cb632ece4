import { existsSync, statSync } from 'node:fs';
import { dirname, isAbsolute } from 'node:path';
import type { StartedTestContainer } from 'testcontainers';

/**
 * Postgres and Redis in containers (testcontainers), for machines with a Docker engine and no
 * server binaries. They run on the host's network, on the free port they are given, exactly as
 * the local binaries would. Postgres runs in a loop inside its container, so that stopping it (a
 * fault a test injects) does not end the container: it comes back unless held.
 */
const PGDATA = '/var/lib/postgresql/data';

/** Runs a command in the container; throws with its output when it fails. */
async function run(container: StartedTestContainer, command: string[]): Promise<void> {
  const result = await container.exec(command);
  if (result.exitCode !== 0) throw new Error(`${command.join(' ')} in the container: exit ${result.exitCode}: ${result.output}`);
}

export interface PostgresContainer {
  /** pg_ctl stop in the given mode: the loop starts the server again. */
  restart: (mode: 'fast' | 'immediate') => Promise<void>;
  /** The server down (fast) until start(). */
  shutdown: () => Promise<void>;
  start: () => Promise<void>;
  /** Puts lines at the top of pg_hba.conf (reload the configuration after). */
  prependHba: (lines: string) => Promise<void>;
  stop: () => Promise<void>;
}

export async function startPostgresContainer(port: number, settings: string[]): Promise<PostgresContainer> {
  const { GenericContainer, Wait } = await import('testcontainers');
  const server = `docker-entrypoint.sh postgres -p ${port} ${settings.join(' ')}`;
  const container = await new GenericContainer('postgres:17')
    .withNetworkMode('host')
    .withEnvironment({ POSTGRES_HOST_AUTH_METHOD: 'trust', POSTGRES_INITDB_ARGS: '--locale=C --encoding=UTF8' })
    .withEntrypoint(['sh', '-c', `while true; do [ -f /tmp/held ] || ${server}; sleep 0.2; done`])
    // The image's first start initialises the cluster with a server of its own, then starts the real one.
    .withWaitStrategy(Wait.forLogMessage(/database system is ready to accept connections/, 2))
    .withStartupTimeout(120_000)
    .start();
  const pgCtl = (mode: string) => run(container, ['gosu', 'postgres', 'pg_ctl', '-D', PGDATA, '-m', mode, '-w', 'stop']);
  return {
    restart: (mode) => pgCtl(mode),
    shutdown: async () => {
      await run(container, ['touch', '/tmp/held']);
      await pgCtl('fast');
    },
    start: () => run(container, ['rm', '-f', '/tmp/held']),
    prependHba: (lines) =>
      run(container, ['sh', '-c', `printf '%s' "$1" | cat - ${PGDATA}/pg_hba.conf > /tmp/hba && cp /tmp/hba ${PGDATA}/pg_hba.conf`, 'sh', lines]),
    stop: async () => {
      await container.stop();
    },
  };
}

/**
 * One redis-server (or sentinel) with these arguments, on the host's network: the paths among
 * its arguments (a config file, a --dir) are mounted at the same place, so that it reads and
 * writes them as a local process would. kill() ends it at once.
 */
export async function startRedisProcessContainer(port: number, args: string[]): Promise<{ kill: () => Promise<void> }> {
  const { GenericContainer, Wait } = await import('testcontainers');
  const mounts = new Set<string>();
  for (const arg of args) if (isAbsolute(arg) && existsSync(arg)) mounts.add(statSync(arg).isDirectory() ? arg : dirname(arg));
  const container = await new GenericContainer('redis:7')
    .withNetworkMode('host')
    .withBindMounts([...mounts].map((path) => ({ source: path, target: path })))
    .withEntrypoint(['redis-server'])
    .withCommand([...args, '--port', String(port), '--bind', '127.0.0.1'])
    .withWaitStrategy(Wait.forLogMessage(/Ready to accept connections|Sentinel ID is/))
    .withStartupTimeout(120_000)
    .start();
  return {
    kill: async () => {
      await container.stop({ timeout: 0 });
    },
  };
}
