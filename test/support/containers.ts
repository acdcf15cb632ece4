import type { StartedTestContainer } from 'testcontainers';

/**
 * Postgres and Redis in containers (testcontainers), for machines with a Docker engine and no
 * server binaries. They run on the host's network, on the free port they are given, exactly as
 * the local binaries would; inside, the server runs in a loop so that stopping it (a fault a
 * test injects) does not end the container: it comes back unless held.
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

export interface RedisContainer {
  /** kill -9 of the server; the loop starts it again, from its RDB file if `fromSnapshot`, else empty. */
  restart: (fromSnapshot: boolean) => Promise<void>;
  stop: () => Promise<void>;
}

export async function startRedisContainer(port: number, args: string[]): Promise<RedisContainer> {
  const { GenericContainer, Wait } = await import('testcontainers');
  const quoted = args.map((arg) => `'${arg.replace(/'/g, `'\\''`)}'`).join(' ');
  const server = `redis-server ${quoted} --port ${port} --bind 127.0.0.1 --dir /data`;
  const container = await new GenericContainer('redis:7')
    .withNetworkMode('host')
    .withEntrypoint(['sh', '-c', `while true; do ${server}; sleep 0.1; done`])
    .withWaitStrategy(Wait.forLogMessage(/Ready to accept connections/))
    .withStartupTimeout(120_000)
    .start();
  return {
    restart: async (fromSnapshot) => {
      await run(container, ['sh', '-c', `${fromSnapshot ? '' : 'rm -f /data/dump.rdb; '}kill -9 $(pidof redis-server)`]);
    },
    stop: async () => {
      await container.stop();
    },
  };
}
