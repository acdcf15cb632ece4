import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';

/**
 * Where the tests' Postgres and Redis come from, in this order of preference: the URL given
 * (PG_URL, REDIS_URL); containers, when a Docker engine answers; binaries on this machine,
 * found on the PATH or where packages put them. PGR_TEST_SERVICES=containers|binaries forces
 * one of the last two.
 */
export type ServiceSource = { kind: 'url'; url: string } | { kind: 'containers' } | { kind: 'binaries'; path: string };

export interface Findings {
  /** The URL the environment gives for this service. */
  url?: string;
  /** PGR_TEST_SERVICES, when set. */
  forced?: string;
  dockerAnswers: boolean;
  /** Postgres: the directory holding initdb and pg_ctl; Redis: the redis-server binary. */
  binaries?: string;
}

export function chooseSource(service: 'postgres' | 'redis', found: Findings): ServiceSource {
  if (found.url) return { kind: 'url', url: found.url };
  const install =
    service === 'postgres'
      ? 'Postgres server binaries (initdb, pg_ctl: Debian/Ubuntu postgresql, Homebrew postgresql@17)'
      : 'redis-server (Debian/Ubuntu redis-server, Homebrew redis)';
  const envVar = service === 'postgres' ? 'PG_URL' : 'REDIS_URL';
  if (found.forced !== undefined && found.forced !== 'containers' && found.forced !== 'binaries') {
    throw new Error(`PGR_TEST_SERVICES=${found.forced}: give containers or binaries (or leave it unset)`);
  }
  if (found.forced !== 'binaries' && found.dockerAnswers) return { kind: 'containers' };
  if (found.forced === 'containers') throw new Error('PGR_TEST_SERVICES=containers, but no Docker engine answers (start Docker, or set DOCKER_HOST)');
  if (found.binaries) return { kind: 'binaries', path: found.binaries };
  throw new Error(
    `The tests need a ${service === 'postgres' ? 'Postgres' : 'Redis'}: set ${envVar}, start a Docker engine (the tests then run containers), or install ${install}.`,
  );
}

/** The directory with a program of this name on the PATH, if any. */
function onPath(program: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) if (dir && existsSync(join(dir, program))) return dir;
  return undefined;
}

/** Directories matching `base/<entry>/rest` for each entry of base, newest version first. */
function versioned(base: string, rest: string, match: RegExp): string[] {
  if (!existsSync(base)) return [];
  const version = (name: string) => Number(/(\d+)(?:\.\d+)?$/.exec(name)?.[1] ?? 0);
  return readdirSync(base)
    .filter((entry) => match.test(entry))
    .sort((a, b) => version(b) - version(a))
    .map((entry) => join(base, entry, rest));
}

/** Where initdb and pg_ctl are: the PATH, pg_config, then where Debian, RHEL, Homebrew and source builds put them. */
export function findPostgresBinaries(): string | undefined {
  const candidates = [
    onPath('initdb'),
    pgConfigBindir(),
    ...versioned('/usr/lib/postgresql', 'bin', /^\d+$/),
    ...versioned('/usr', 'bin', /^pgsql-\d+$/),
    ...versioned('/opt/homebrew/opt', 'bin', /^postgresql(@\d+)?$/),
    ...versioned('/usr/local/opt', 'bin', /^postgresql(@\d+)?$/),
    '/usr/local/pgsql/bin',
  ];
  return candidates.find((dir) => dir && existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'pg_ctl')));
}

function pgConfigBindir(): string | undefined {
  try {
    return execFileSync('pg_config', ['--bindir'], { stdio: ['ignore', 'pipe', 'ignore'] })
      .toString()
      .trim();
  } catch {
    return undefined;
  }
}

export function findRedisServer(): string | undefined {
  const dir = onPath('redis-server') ?? ['/usr/bin', '/usr/local/bin', '/opt/homebrew/bin', '/usr/sbin'].find((each) => existsSync(join(each, 'redis-server')));
  return dir && join(dir, 'redis-server');
}

/** Whether a Docker engine answers: asked only where one could be (a socket, DOCKER_HOST, testcontainers' settings). */
export async function dockerAnswers(): Promise<boolean> {
  const sockets = [
    '/var/run/docker.sock',
    join(homedir(), '.docker', 'run', 'docker.sock'),
    join(process.env.XDG_RUNTIME_DIR ?? '/nonexistent', 'docker.sock'),
  ];
  const configured = process.env.DOCKER_HOST || existsSync(join(homedir(), '.testcontainers.properties'));
  if (!configured && !sockets.some((socket) => existsSync(socket))) return false;
  try {
    const { getContainerRuntimeClient } = await import('testcontainers');
    await getContainerRuntimeClient();
    return true;
  } catch {
    return false;
  }
}

/** What this machine offers (found once per process): PGR_TEST_SERVICES, a Docker engine, Postgres and Redis binaries. */
export interface MachineFindings {
  forced?: string;
  dockerAnswers: boolean;
  postgresBinaries?: string;
  redisServer?: string;
}

let machine: Promise<MachineFindings> | undefined;

export function machineFindings(): Promise<MachineFindings> {
  machine ??= (async () => ({
    forced: process.env.PGR_TEST_SERVICES || undefined,
    dockerAnswers: process.env.PGR_TEST_SERVICES === 'binaries' ? false : await dockerAnswers(),
    postgresBinaries: findPostgresBinaries(),
    redisServer: findRedisServer(),
  }))();
  return machine;
}

/** The source of this service; `url` undefined for a server of the test's own (even with PG_URL set). */
export async function sourceOf(service: 'postgres' | 'redis', url: string | undefined): Promise<ServiceSource> {
  const found = await machineFindings();
  return chooseSource(service, {
    url,
    forced: found.forced,
    dockerAnswers: found.dockerAnswers,
    binaries: service === 'postgres' ? found.postgresBinaries : found.redisServer,
  });
}
