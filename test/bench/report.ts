/** The bench's report: tables of every result and of the performance targets, written into docs/benchmarks.md and the README. */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { JOIN_LIMITS } from '../../consumers/lookahead.js';
import { PRODUCER_DEFAULTS } from '../../producer/options.js';
import type { Latency } from './cdc.js';
import type { Result } from './context.js';
import { SCALE_JOB_DELAY_MS, type ScalePoint } from './scaleout.js';

export interface Target {
  what: string;
  measured: string;
  ok: boolean;
}

const format = (value: number) => Math.round(value).toLocaleString('en-US');
const seconds = (value: number) => `${value.toFixed(1)} s`;
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const spread = (values: number[]) => `${Math.min(...values).toFixed(2)}–${Math.max(...values).toFixed(2)}`;

/** The targets of the performance issue that these results speak to, each PASS or FAIL. */
export function targetsOf(all: Result[], latencies: Latency[], scale: ScalePoint[], limits: { memoryRun: string }): Target[] {
  const targets: Target[] = [];
  const curve = scale.filter((point) => point.concurrency !== undefined);
  const one = curve.find((point) => point.processes === 1);
  for (const [processes, wanted] of [
    [4, 3.5],
    [8, 6],
  ]) {
    const point = curve.find((candidate) => candidate.processes === processes);
    if (!one || !point) continue;
    const ratio = point.changesPerSecond / one.changesPerSecond;
    targets.push({
      what: `scale-out: ${processes} consumer processes ≥ ${wanted} × the changes/s of 1 (each --concurrency ${point.concurrency})`,
      measured: `${ratio.toFixed(2)} ×`,
      ok: ratio >= wanted,
    });
  }
  for (const result of all.filter((candidate) => candidate.manualRatios)) {
    const ratio = median(result.manualRatios!);
    targets.push({
      what: `${result.name}: faster than the manual path (COPY csv to a file, DuckDB read_csv)`,
      measured: `${ratio.toFixed(2)} × its speed`,
      ok: ratio > 1,
    });
  }
  const narrow = all.find((result) => result.name === 'backfill, narrow, mixed types');
  if (narrow?.roundRatios) {
    const ratio = median(narrow.roundRatios);
    targets.push({ what: 'backfill, narrow: ≥ 0.5 × raw binary COPY, launch to exit', measured: ratio.toFixed(2), ok: ratio >= 0.5 });
  }
  for (const result of all.filter((candidate) => candidate.rawName === 'pg_recvlogical' && !candidate.name.includes('→'))) {
    const ratio = result.rawSeconds / result.seconds;
    targets.push({ what: `${result.name}: ≥ 0.9 × pg_recvlogical`, measured: ratio.toFixed(2), ok: ratio >= 0.9 });
  }
  for (const latency of latencies) {
    const bound = latency.rate >= 20_000 ? 250 : 100;
    targets.push({
      what: `commit → visible in DuckDB at ${format(latency.rate)} changes/s: p99 ≤ ${bound} ms`,
      measured: `p50 ${latency.p50} ms, p99 ${latency.p99} ms (${latency.batches} batches; the writer kept ${format(latency.achieved)} changes/s)`,
      ok: latency.p99 <= bound,
    });
  }
  const memory = all.filter((result) => result.name === limits.memoryRun || result.name.startsWith('CDC, one transaction inserting'));
  if (memory.length > 0) {
    const peak = Math.max(...memory.map((result) => result.consumerPeakMb));
    targets.push({ what: 'consumer peak RSS ≤ 300 MB (10 M-row backfill, 5 M-row transaction)', measured: `${peak} MB`, ok: peak <= 300 });
  }
  if (all.length > 0) {
    const peak = Math.max(...all.map((result) => result.producerPeakMb));
    targets.push({ what: 'producer peak RSS ≤ 200 MB', measured: `${peak} MB`, ok: peak <= 200 });
    const worstRedis = Math.max(...all.map((result) => result.redisPeakMb / result.redisBoundMb));
    targets.push({
      what: 'Redis peak memory within the backlog bound',
      measured: `at most ${Math.round(worstRedis * 100)} % of the bound`,
      ok: worstRedis <= 1,
    });
  }
  return targets;
}

export function report(all: Result[], targets: Target[], scale: ScalePoint[]): void {
  const machine = `${cpus().length} × ${cpus()[0]?.model.trim()}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}, PostgreSQL ${postgresVersion()}`;
  const main = [
    `Measured ${new Date().toISOString().slice(0, 10)} on ${machine}.`,
    '',
    '| scenario | rows or changes | pg-replicate | raw Postgres, same data | ratio | producer peak RSS | consumer peak RSS | Redis peak |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...all.map((result) => {
      const rate = result.count / result.seconds;
      const raw = result.count / result.rawSeconds;
      return `| ${result.name} | ${format(result.count)} | ${format(rate)}/s | ${format(raw)}/s (${result.rawName}) | ${(rate / raw).toFixed(2)} | ${result.producerPeakMb} MB | ${result.consumerPeakMb} MB | ${result.redisPeakMb} MB (bound ${result.redisBoundMb} MB) |`;
    }),
    '',
    '| target (performance issue) | measured | |',
    '| --- | --- | --- |',
    ...targets.map((target) => `| ${target.what} | ${target.measured} | ${target.ok ? 'PASS' : 'FAIL'} |`),
  ];
  const backfills = all.filter((result) => result.roundRatios);
  const details = [
    "Backfills, from the producer's launch to its exit (process start-up, slot and snapshot, the copy, its check that every chunk is applied), each round a raw binary COPY, the manual path and the pipeline back to back (the machine's speed drifts); the median round is reported, the range is of every round:",
    '',
    '| scenario | bytes a row (COPY text) | rounds | pipeline | first COPY → last commit | raw binary COPY | ratio to raw (range) | manual path | pipeline ÷ manual time (range) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...backfills.map((result) => {
      const manual = result.manualRatios
        ? `${seconds(result.manualSeconds!)} | ${median(result.manualRatios).toFixed(2)} (${spread(result.manualRatios)})`
        : '— | —';
      return `| ${result.name} | ${result.bytesPerRow ?? '—'} | ${result.roundRatios!.length} | ${seconds(result.seconds)} (${format(result.count / result.seconds)} rows/s) | ${seconds(result.copySeconds!)} | ${seconds(result.rawSeconds)} | ${median(result.roundRatios!).toFixed(2)} (${spread(result.roundRatios!)}) | ${manual} |`;
    }),
    '',
    ...all
      .filter((result) => result.duckdbAloneSeconds !== undefined)
      .map(
        (result) =>
          `${result.name}: the DuckDB destination alone, applying the same rows as COPY text chunks of ${format(PRODUCER_DEFAULTS.copyChunkRows)} rows (as many to a transaction as the consumer joins when they wait queued: up to ${JOIN_LIMITS.batches}, ${JOIN_LIMITS.bytes / 2 ** 20} MiB) with nothing else running, loads ${format(result.count / result.duckdbAloneSeconds!)} rows/s (${(result.rawSeconds / result.duckdbAloneSeconds!).toFixed(2)} × raw COPY).\n`,
      ),
    ...(scale.length === 0
      ? []
      : [
          `Scale-out into the BigQuery emulator (each job answered ${SCALE_JOB_DELAY_MS} ms after it arrives), 8 partitions, 16 tables, batches of at most 1 000 changes, the same backlog of small transactions drained by each number of consumer processes of one destination:`,
          '',
          '| consumer processes | --concurrency of each | changes/s | × one process at --concurrency 1 |',
          '| ---: | ---: | ---: | ---: |',
          ...scale.map(
            (point) =>
              `| ${point.processes} | ${point.concurrency ?? 'default (8, one per partition)'} | ${format(point.changesPerSecond)} | ${(point.changesPerSecond / scale[0].changesPerSecond).toFixed(2)} |`,
          ),
          '',
        ]),
    `CPU seconds each part used during each run (user + system, all threads; the machine has ${cpus().length} cores, so a run of w seconds has ${cpus().length}·w to share):`,
    '',
    '| scenario | wall | Postgres | producer | Redis | consumer (with its destination) | all | share of the cores |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...all.map(({ name, seconds: wall, cpu }) => {
      const total = cpu.postgres + cpu.producer + cpu.redis + cpu.consumer;
      return `| ${name} | ${seconds(wall)} | ${seconds(cpu.postgres)} | ${seconds(cpu.producer)} | ${seconds(cpu.redis)} | ${seconds(cpu.consumer)} | ${seconds(total)} | ${Math.round((100 * total) / (wall * cpus().length))} % |`;
    }),
  ];
  const whole = [...main, '', ...details].join('\n');
  process.stdout.write(`${whole}\n`);
  writeBetweenMarkers(join(process.cwd(), 'docs', 'benchmarks.md'), whole);
  writeBetweenMarkers(join(process.cwd(), 'README.md'), main.join('\n'));
}

/** Replaces what a file holds between `<!-- bench:start -->` and `<!-- bench:end -->`, when it has both. */
function writeBetweenMarkers(path: string, text: string): void {
  const content = readFileSync(path, 'utf8');
  const start = '<!-- bench:start -->';
  const end = '<!-- bench:end -->';
  if (!content.includes(start) || !content.includes(end)) return;
  writeFileSync(path, `${content.slice(0, content.indexOf(start) + start.length)}\n${text}\n${content.slice(content.indexOf(end))}`);
  process.stderr.write(`${path} updated\n`);
}

function postgresVersion(): string {
  try {
    return execFileSync('pg_config', ['--version']).toString().trim().replace('PostgreSQL ', '');
  } catch {
    return 'unknown';
  }
}
