import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { DuckDBInstance } from '@duckdb/node-api';
import type { Redis } from 'ioredis';
import type { PipelineStatus } from '../../cli/status.js';
import type { PostgresServer } from './services.js';

export const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'cli', 'index.js');

/** A pg-replicate CLI process, with everything it printed kept for assertions. */
/** Every CLI process started by this test file that has not exited. */
const running = new Set<CliProcess>();

/**
 * Kills what a failed test left running (its `finally` may not reach every process): a live
 * child keeps the test worker, and so the whole run, from ending.
 */
export async function killStrayProcesses(): Promise<void> {
  await Promise.all([...running].map((process) => process.kill9()));
}

export class CliProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;
  /** The CLI command run, e.g. "consumer duckdb". */
  private readonly command: string;

  /**
   * `wrapper` runs the CLI through a command that then execs it (e.g. `prlimit --fsize=N --`);
   * `script` runs another Node program in its place (a program of the user's).
   */
  constructor(args: string[], env: Record<string, string> = {}, wrapper: string[] = [], script = CLI) {
    // PGR_CPU_PROF=DIR writes a V8 CPU profile of every CLI process there (npm run bench -- profiles).
    const profile = process.env.PGR_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.PGR_CPU_PROF}`] : [];
    this.command = args.slice(0, 2).join(' ');
    const [command, ...rest] = [...wrapper, process.execPath, ...profile, script, ...args];
    this.child = spawn(command, rest, {
      env: { ...process.env, LOG_LEVEL: process.env.LOG_LEVEL ?? 'info', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout!.on('data', (data) => (this.stdout += data));
    this.child.stderr!.on('data', (data) => {
      this.stderr += data;
      // PGR_TEST_LOGS=1 shows every CLI process's log while debugging a test.
      if (process.env.PGR_TEST_LOGS) process.stderr.write(data);
    });
    running.add(this);
    this.exited = new Promise((resolve) =>
      this.child.once('exit', (code) => {
        running.delete(this);
        resolve(code);
      }),
    );
  }

  /** Stopped or killed by the test (not ended on its own). */
  private ended = false;

  /** Why the process failed on its own, if it did: its exit code and the end of what it printed. */
  get endedOnItsOwn(): string | undefined {
    if (this.ended || this.child.exitCode === 0 || (this.child.exitCode === null && this.child.signalCode === null)) return undefined;
    return `${this.command} exited with ${this.child.exitCode ?? this.child.signalCode}: ${this.stderr.slice(-2000)}`;
  }

  kill9(): Promise<number | null> {
    this.ended = true;
    this.child.kill('SIGKILL');
    return this.exited;
  }

  async stop(): Promise<number | null> {
    this.ended = true;
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.exited;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 30_000);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }
}

export function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const process = new CliProcess(args, env);
  return process.exited.then((code) => ({ code, stdout: process.stdout, stderr: process.stderr }));
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'pgr-test-'));
}

let counter = 0;
/** Names unique to one test: pipeline, slot, publication. */
export function names(prefix: string) {
  const id = `${prefix}_${process.pid}_${++counter}`;
  return { pipeline: id, slot: `s_${id}`.toLowerCase(), publication: `p_${id}` };
}

/** How long a wait may go on: `stallMs` without the probe succeeding and without `progress` changing. */
export interface WaitOptions {
  /** Fails after this long with neither success nor progress (default 120 s). */
  stallMs?: number;
  intervalMs?: number;
  /**
   * What moves while the awaited event is on its way (ranges copied, the slot's LSN): each change
   * starts the stall budget anew, so a slow machine makes a wait longer, not a failure, while a
   * real stall still fails within stallMs.
   */
  progress?: () => Promise<unknown>;
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, options: WaitOptions = {}): Promise<T> {
  const { stallMs = 120_000, intervalMs = 200, progress } = options;
  let until = Date.now() + stallMs;
  let last = progress ? JSON.stringify(await progress()) : undefined;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (progress) {
      const now = JSON.stringify(await progress());
      if (now !== last) until = Date.now() + stallMs;
      last = now;
    }
    if (Date.now() > until) throw new Error(`timed out waiting for ${what} (nothing for ${stallMs / 1000} s${progress ? `; progress stuck at ${last}` : ''})`);
    await sleep(intervalMs);
  }
}

export async function currentWalLsn(pg: PostgresServer): Promise<string> {
  return (await pg.query('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0].lsn;
}

/** Whether LSN a is at or before b, as Postgres compares them. */
export async function lsnNotAfter(pg: PostgresServer, a: string, b: string): Promise<boolean> {
  return (await pg.query('SELECT $1::pg_lsn <= $2::pg_lsn AS ok', [a, b])).rows[0].ok;
}

export async function slotConfirmed(pg: PostgresServer, slot: string): Promise<string | undefined> {
  return (await pg.query('SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1', [slot])).rows[0]?.lsn ?? undefined;
}

/**
 * Waits until the slot's confirmed LSN reaches target: every destination has applied everything
 * before it. Fails only when the slot stops moving for `stallMs`.
 */
export async function waitForSlotAt(pg: PostgresServer, slot: string, target: string, options: WaitOptions = {}): Promise<void> {
  await waitFor(
    `slot ${slot} to confirm ${target}`,
    async () => {
      const row = (await pg.query('SELECT confirmed_flush_lsn >= $2::pg_lsn AS reached FROM pg_replication_slots WHERE slot_name = $1', [slot, target]))
        .rows[0];
      return row?.reached === true;
    },
    { progress: () => slotConfirmed(pg, slot), ...options },
  );
}

/** Rows of a table as sorted arrays of text, comparable between Postgres and DuckDB. */
export async function postgresRows(pg: PostgresServer, table: string, columns: string[]): Promise<string[]> {
  const result = await pg.query(`SELECT ${columns.map((column) => `${column}::text`).join(', ')} FROM ${table}`);
  return result.rows.map((row) => JSON.stringify(Object.values(row).map((value) => normalise(value as string | null)))).sort();
}

export async function duckdbRows(path: string, table: string, columns: string[]): Promise<string[]> {
  const instance = await DuckDBInstance.create(path, { access_mode: 'READ_ONLY' });
  const connection = await instance.connect();
  try {
    const reader = await connection.runAndReadAll(`SELECT ${columns.map((column) => `CAST(${column} AS VARCHAR)`).join(', ')} FROM ${table}`);
    return rowsAsText(reader.getRows());
  } finally {
    connection.closeSync();
    instance.closeSync();
  }
}

/** Rows read as text (CAST … AS VARCHAR), in the form postgresRows gives, for deepEqual. */
export function rowsAsText(rows: unknown[][]): string[] {
  return rows.map((row) => JSON.stringify(row.map((value) => normalise(value === null ? null : String(value))))).sort();
}

function normalise(value: string | null): string | null {
  if (value === 't' || value === 'true') return 'true';
  if (value === 'f' || value === 'false') return 'false';
  return value;
}

/** A pipeline under test: its names, and how to start its producer and consumers as CLI processes. */
export class TestPipeline {
  readonly pipeline: string;
  readonly slot: string;
  readonly publication: string;
  readonly dir = tempDir();
  /** Every process started for this pipeline: a wait fails at once when one of them ended on its own. */
  private readonly processes: CliProcess[] = [];

  constructor(
    private readonly pg: PostgresServer,
    private readonly redisUrl: string,
    prefix: string,
    private readonly destinations: string[],
  ) {
    ({ pipeline: this.pipeline, slot: this.slot, publication: this.publication } = names(prefix));
  }

  private get common(): string[] {
    return ['--pipeline', this.pipeline, '--redis-url', this.redisUrl];
  }

  /** The producer's command line, for runCli (a run that is expected to end). */
  producerArgs(extra: string[] = []): string[] {
    return [
      'producer',
      '--pg-url',
      this.pg.url,
      '--publication',
      this.publication,
      '--slot',
      this.slot,
      '--destinations',
      this.destinations.join(','),
      ...this.common,
      ...extra,
    ];
  }

  producer(extra: string[] = []): CliProcess {
    return this.track(new CliProcess(this.producerArgs(extra)));
  }

  private track(process: CliProcess): CliProcess {
    this.processes.push(process);
    return process;
  }

  /** Throws when a process of this pipeline ended without the test stopping it (its log says why). */
  assertRunning(): void {
    for (const process of this.processes) {
      const ended = process.endedOnItsOwn;
      if (ended) throw new Error(ended);
    }
  }

  /** A destination the producer was not started with is new: its consumer registers it. */
  private consumerArgs(name: string): string[] {
    return [
      '--name',
      name,
      '--lock-duration-ms',
      '3000',
      '--stalled-interval-ms',
      '1000',
      ...this.common,
      ...(this.destinations.includes(name) ? [] : ['--register']),
    ];
  }

  duckdbPath(name: string): string {
    return join(this.dir, `${name}.duckdb`);
  }

  duckdb(name: string, env: Record<string, string> = {}, wrapper: string[] = [], extra: string[] = []): CliProcess {
    return this.track(new CliProcess(['consumer', 'duckdb', '--path', this.duckdbPath(name), ...this.consumerArgs(name), ...extra], env, wrapper));
  }

  /** A BigQuery consumer writing dataset `dataset` through the emulator at `endpoint`. */
  bigquery(name: string, endpoint: string, dataset: string, env: Record<string, string> = {}, project = 'test-project'): CliProcess {
    return this.track(
      new CliProcess(['consumer', 'bigquery', '--project', project, '--dataset', dataset, '--api-endpoint', endpoint, ...this.consumerArgs(name)], env),
    );
  }

  /** A Postgres destination writing the database at `url`. */
  postgres(name: string, url: string, extra: string[] = []): CliProcess {
    return this.track(new CliProcess(['consumer', 'postgres', '--url', url, ...this.consumerArgs(name), ...extra]));
  }

  stdout(name: string): CliProcess {
    return this.track(new CliProcess(['consumer', 'stdout', ...this.consumerArgs(name)]));
  }

  /**
   * Runs the producer and the DuckDB consumer "main", waits for the initial copy, runs `body`,
   * then stops both; returns them for assertions on what they printed.
   */
  async runWithDuckdb(redis: Redis, body: (processes: { producer: CliProcess; consumer: CliProcess }) => Promise<void>) {
    const processes = { producer: this.producer(), consumer: this.duckdb('main') };
    try {
      await this.waitForCopy(redis);
      await body(processes);
    } finally {
      await Promise.all([processes.producer.stop(), processes.consumer.stop()]);
    }
    return processes;
  }

  /** `pg-replicate resync --table` of this pipeline (for one destination, or all). */
  resync(table: string, destination?: string): ReturnType<typeof runCli> {
    return runCli(['resync', '--table', table, ...(destination ? ['--destination', destination] : []), ...this.common, '--pg-url', this.pg.url]);
  }

  /** `pg-replicate status --json` of this pipeline. */
  async status(): Promise<PipelineStatus> {
    return JSON.parse((await runCli(['status', '--json', ...this.common])).stdout);
  }

  /** Waits until every destination applied the initial copy; it progresses with the slot and the copy's ranges. */
  async waitForCopy(redis: Redis): Promise<void> {
    await waitFor(
      'the copy to be applied by every destination',
      async () => {
        this.assertRunning();
        return (await redis.hget(`pgr:{${this.pipeline}}:state`, 'copy')) === 'done';
      },
      {
        progress: async () => [await redis.hgetall(`pgr:{${this.pipeline}}:copy-progress`), await redis.hgetall(`pgr:{${this.pipeline}}:state`)],
      },
    );
  }

  /** Waits until every destination applied everything written so far (the slot confirms the current WAL position). */
  async waitForCatchUp(options?: WaitOptions): Promise<void> {
    const target = await currentWalLsn(this.pg);
    await waitFor(
      `slot ${this.slot} to confirm ${target}`,
      async () => {
        this.assertRunning();
        return lsnNotAfter(this.pg, target, (await slotConfirmed(this.pg, this.slot)) ?? '0/0');
      },
      { progress: () => slotConfirmed(this.pg, this.slot), ...options },
    );
  }
}

/** Keys of copy chunks (rows and holders) Redis holds for a pipeline. */
export async function storedChunks(redis: { keys(pattern: string): Promise<string[]> }, pipeline: string): Promise<string[]> {
  return (await redis.keys(`pgr:{${pipeline}}:chunk*`)).sort();
}

/**
 * A write load of small transactions on the load's tables in `schema`: updates of a keyed table,
 * inserts and deletes in a ledger, and every few rounds two transactions committed back to back
 * in one round trip.
 */
export async function writeLoad(pg: PostgresServer, rounds: number, pauseMs = 5, schema = 'public'): Promise<void> {
  for (let round = 1; round <= rounds; round++) {
    const id = 1 + (round % 200);
    if (round % 5 === 0) {
      await pg.query(
        `BEGIN; UPDATE ${schema}.accounts SET balance = balance + 1 WHERE id = ${id}; COMMIT; BEGIN; INSERT INTO ${schema}.ledger (account, amount) VALUES (${id}, ${round}); COMMIT;`,
      );
    } else if (round % 7 === 0) {
      await pg.query(`DELETE FROM ${schema}.ledger WHERE id = (SELECT min(id) FROM ${schema}.ledger)`);
    } else {
      await pg.query(loadRound(schema, round, id));
    }
    if (pauseMs > 0) await sleep(pauseMs);
  }
}

/**
 * Transactions `statement(1)`, `statement(2)`, … until stopped; one that fails (Postgres is
 * away: a restart, a terminated connection) is let go. Says how many committed and failed.
 */
export function loadUntilStopped(
  pg: PostgresServer,
  statement: (n: number) => string,
  pauseMs = 4,
): { stop: () => Promise<{ committed: number; failed: number }> } {
  let running = true;
  const counts = { committed: 0, failed: 0 };
  const done = (async () => {
    for (let n = 1; running; n++) {
      try {
        await pg.query(statement(n));
        counts.committed++;
      } catch {
        counts.failed++;
        await sleep(200);
      }
      await sleep(pauseMs);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return counts;
    },
  };
}

/** One round of the load: a transaction touching the three tables. */
export function loadRound(schema: string, round: number, id = 1 + (round % 200)): string {
  return `BEGIN; UPDATE ${schema}.accounts SET balance = balance - 1, note = 'r${round}' WHERE id = ${id}; INSERT INTO ${schema}.ledger (account, amount) VALUES (${id}, -${round}); INSERT INTO ${schema}.events VALUES (${round}, 'e${round}'); COMMIT;`;
}

/** The load's tables in `schema` (tests sharing a database use a schema each) and a publication of them. */
export const LOAD_SCHEMA = (publication: string, schema = 'public') => `
  CREATE SCHEMA IF NOT EXISTS ${schema};
  CREATE TABLE ${schema}.accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);
  CREATE TABLE ${schema}.ledger (id bigserial PRIMARY KEY, account int, amount bigint);
  CREATE TABLE ${schema}.events (n int, label text);
  ALTER TABLE ${schema}.events REPLICA IDENTITY FULL;
  INSERT INTO ${schema}.accounts SELECT g, 1000, 'seed' FROM generate_series(1, 200) g;
  INSERT INTO ${schema}.ledger (account, amount) SELECT g % 200, g FROM generate_series(1, 2000) g;
  CREATE PUBLICATION ${publication} FOR TABLE ${schema}.accounts, ${schema}.ledger, ${schema}.events;
`;

/** The load's tables as DuckDB holds them and as Postgres does, ready for deepEqual. */
export async function loadTablesIn(
  pg: PostgresServer,
  duckdbPath: string,
  schema = 'public',
): Promise<{ duckdb: Record<string, string[]>; postgres: Record<string, string[]> }> {
  const duckdb: Record<string, string[]> = {};
  const postgres: Record<string, string[]> = {};
  for (const [table, columns] of LOAD_TABLES) {
    duckdb[table] = await duckdbRows(duckdbPath, `${schema}.${table}`, columns);
    postgres[table] = await postgresRows(pg, `${schema}.${table}`, columns);
  }
  return { duckdb, postgres };
}

export const LOAD_TABLES: [string, string[]][] = [
  ['accounts', ['id', 'balance', 'note']],
  ['ledger', ['id', 'account', 'amount']],
  ['events', ['n', 'label']],
];

/** A Prometheus text exposition, as `name{labels}` → value. */
export async function scrape(port: number): Promise<Map<string, number>> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}`);
  const samples = new Map<string, number>();
  for (const line of (await response.text()).split('\n')) {
    const sample = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (sample) samples.set(sample[1], Number(sample[2]));
  }
  return samples;
}
