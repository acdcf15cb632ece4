/** What the bench measures besides time: memory and CPU of each process, and quiet before a run. */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { Redis } from 'ioredis';
import pg from 'pg';
import copyStreams from 'pg-copy-streams';
import type { CliProcess } from '../support/pipeline.js';
import type { PostgresServer } from '../support/services.js';

/** Linux's USER_HZ: the unit of the CPU times in /proc/<pid>/stat. */
const CLOCK_TICKS = 100;

/** CPU seconds (user + system, every thread) each part used during a run. */
export interface CpuSeconds {
  postgres: number;
  producer: number;
  redis: number;
  consumer: number;
}

/** When (ms since the epoch) a process logged `msg`. */
export function loggedAt(logs: string, msg: string): number {
  for (const line of logs.split('\n')) {
    if (!line.startsWith('{')) continue;
    const entry = JSON.parse(line) as { time?: string; msg?: string };
    if (entry.msg === msg && entry.time !== undefined) return Date.parse(entry.time);
  }
  throw new Error(`the producer never logged "${msg}"`);
}

/**
 * Writes the data just generated out of shared buffers, and every file written so far to
 * disk, before a scenario is measured: neither the checkpointer nor the kernel's writeback is
 * then still at it (and taking a core) during the run.
 */
export async function quiesce(pgServer: PostgresServer): Promise<void> {
  // Needs superuser or pg_checkpoint: against a PG_URL without either, measure as it is.
  await pgServer.query('CHECKPOINT').catch(() => {});
  spawnSync('sync');
}

/** The raw binary COPY of the table to nowhere, from connecting to its end: Postgres' own pace. */
export async function timeRawCopy(url: string, table: string): Promise<number> {
  const started = performance.now();
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const stream = client.query(copyStreams.to(`COPY ${table} TO STDOUT (FORMAT binary)`));
  for await (const chunk of stream as AsyncIterable<Buffer>) void chunk;
  const seconds = (performance.now() - started) / 1000;
  await client.end();
  return seconds;
}

/**
 * Samples Redis' used memory (what it holds beyond the scenario's start); returns a function
 * giving the peak and the bound, in MB, against a bound in bytes.
 */
export function sampleRedis(redis: Redis): (boundBytes: number) => { redisPeakMb: number; redisBoundMb: number } {
  const usedMemory = async () => Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1] ?? 0);
  let base: number | undefined;
  let peak = 0;
  const sample = async () => {
    const used = await usedMemory();
    base ??= used;
    peak = Math.max(peak, used - base);
  };
  void sample();
  const timer = setInterval(() => void sample().catch(() => {}), 100);
  return (boundBytes) => {
    clearInterval(timer);
    return { redisPeakMb: Math.round(peak / 2 ** 20), redisBoundMb: Math.round(boundBytes / 2 ** 20) };
  };
}

/**
 * Samples a child's resident set size and CPU time; returns a function giving the peak RSS in
 * MB and the CPU seconds last seen (up to its exit, to within the 100 ms between samples).
 */
export function sampleRss(child: CliProcess): () => { mb: number; cpuSeconds: number } {
  let peak = 0;
  let cpuSeconds = 0;
  const sample = () => {
    try {
      const status = readFileSync(`/proc/${child.child.pid}/status`, 'utf8');
      const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      peak = Math.max(peak, kb / 1024);
      cpuSeconds = processTimes(child.child.pid!).own;
    } catch {
      // the process has exited
    }
  };
  const timer = setInterval(sample, 100);
  child.exited.then(() => clearInterval(timer));
  return () => {
    clearInterval(timer);
    sample();
    return { mb: Math.round(peak), cpuSeconds };
  };
}

/** A process's user + system CPU seconds (every thread), and those of its children it has reaped. */
function processTimes(pid: number): { own: number; reaped: number; parent: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15, cutime 16, cstime 17.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return {
    parent: Number(fields[1]),
    own: (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS,
    reaped: (Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS,
  };
}

/**
 * Postgres' CPU seconds so far: the postmaster's, the backends it has reaped, and the live ones
 * (a backend that ends moves from the last into the second, so the sum only grows).
 */
async function postgresCpuSeconds(pgServer: PostgresServer): Promise<number> {
  const { rows } = await pgServer.query('SELECT pg_backend_pid() AS pid');
  const postmaster = processTimes(rows[0].pid).parent;
  const { own, reaped } = processTimes(postmaster);
  let live = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const times = processTimes(Number(entry));
      if (times.parent === postmaster) live += times.own;
    } catch {
      // gone meanwhile
    }
  }
  return own + reaped + live;
}

async function redisCpuSeconds(redis: Redis): Promise<number> {
  const info = await redis.info('cpu');
  return Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1] ?? 0) + Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1] ?? 0);
}

export type CpuReading = Omit<CpuSeconds, 'producer'>;

export async function cpuNow(pgServer: PostgresServer, redis: Redis, consumer: CliProcess): Promise<CpuReading> {
  return { postgres: await postgresCpuSeconds(pgServer), redis: await redisCpuSeconds(redis), consumer: processTimes(consumer.child.pid!).own };
}

/** The CPU each part used between two readings; the producer starts with the run, so all of its time counts. */
export function cpuSince(from: CpuReading, to: CpuReading, producer: () => { cpuSeconds: number }): CpuSeconds {
  return { postgres: to.postgres - from.postgres, producer: producer().cpuSeconds, redis: to.redis - from.redis, consumer: to.consumer - from.consumer };
}
