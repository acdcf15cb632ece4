/**
 * npm run bench: end-to-end backfill and CDC rates into DuckDB, each next to the raw rate at
 * which Postgres hands out the same data in the same run (COPY … TO STDOUT for the backfill,
 * a pg_recvlogical drain of the same WAL for CDC). Writes the table into README.md.
 *
 * BENCH_ROWS (default 1,000,000) and BENCH_CHANGES (default 300,000) set the sizes.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import copyStreams from 'pg-copy-streams';
import { CliProcess, TestPipeline, currentWalLsn, waitForSlotAt } from '../support/pipeline.js';
import { startPostgres, startRedis } from '../support/services.js';

const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const CHANGES = Number(process.env.BENCH_CHANGES ?? 300_000);
const CHANGES_PER_TRANSACTION = 10;

interface Result {
  name: string;
  count: number;
  seconds: number;
  rawSeconds: number;
  rawName: string;
  producerPeakMb?: number;
}

const pgServer = await startPostgres();
const redis = await startRedis();
const results: Result[] = [];
try {
  results.push(await benchBackfill());
  results.push(await benchCdc());
} finally {
  await Promise.all([pgServer.stop(), redis.stop()]);
}
report(results);

async function benchBackfill(): Promise<Result> {
  const pipeline = new TestPipeline(pgServer, redis.url, 'benchcopy', ['bench']);
  process.stderr.write(`loading ${ROWS} rows…\n`);
  await pgServer.query(`
    CREATE TABLE bench_rows (id bigint PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, payload jsonb);
    INSERT INTO bench_rows SELECT g, 'name ' || g, (g % 100000) / 100.0, '2024-01-01'::timestamptz + g * interval '1 second', jsonb_build_object('g', g, 'tag', 'x' || (g % 10))
      FROM generate_series(1, ${ROWS}) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE bench_rows;
  `);
  await pgServer.query('VACUUM ANALYZE bench_rows');
  const rawSeconds = await timeRawCopy('bench_rows');
  const consumer = pipeline.duckdb('bench');
  const started = performance.now();
  const producer = pipeline.producer(['--mode', 'copy']);
  const peak = sampleRss(producer);
  const code = await producer.exited;
  const seconds = (performance.now() - started) / 1000;
  await consumer.stop();
  if (code !== 0) throw new Error(`producer failed: ${producer.stderr}`);
  return { name: 'backfill rows/s', count: ROWS, seconds, rawSeconds, rawName: 'COPY … TO STDOUT', producerPeakMb: peak() };
}

async function benchCdc(): Promise<Result> {
  const pipeline = new TestPipeline(pgServer, redis.url, 'benchcdc', ['bench']);
  await pgServer.query(`
    CREATE TABLE bench_changes (id bigint PRIMARY KEY, name text, amount numeric(12,2), updated timestamptz);
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE bench_changes;
    CREATE PROCEDURE bench_write(total int, per_tx int) LANGUAGE plpgsql AS $$
    DECLARE i int := 0;
    BEGIN
      WHILE i < total LOOP
        FOR j IN 1..per_tx LOOP
          i := i + 1;
          IF i % 10 < 6 THEN
            INSERT INTO bench_changes VALUES (i, 'n' || i, i / 100.0, now());
          ELSIF i % 10 < 9 THEN
            UPDATE bench_changes SET amount = amount + 1, updated = now() WHERE id = i - 5;
          ELSE
            DELETE FROM bench_changes WHERE id = i - 9;
          END IF;
        END LOOP;
        COMMIT;
      END LOOP;
    END $$;
  `);
  // Create the pipeline's slot (empty copy), then stop the producer so the WAL piles up.
  let producer = pipeline.producer();
  const consumer = pipeline.duckdb('bench');
  await pipeline.waitForCopy(redis.client);
  await producer.stop();
  const rawSlot = `${pipeline.slot}_raw`;
  await pgServer.query(`SELECT pg_create_logical_replication_slot('${rawSlot}', 'pgoutput')`);
  process.stderr.write(`writing ${CHANGES} changes in transactions of ${CHANGES_PER_TRANSACTION}…\n`);
  await pgServer.query(`CALL bench_write(${CHANGES}, ${CHANGES_PER_TRANSACTION})`);
  const end = await currentWalLsn(pgServer);

  const rawStarted = performance.now();
  const url = new URL(pgServer.url);
  const drained = spawnSync(
    'pg_recvlogical',
    ['-h', url.hostname, '-p', url.port, '-U', url.username || 'postgres', '-d', url.pathname.slice(1), '-S', rawSlot, '--start', '--endpos', end, '-o', 'proto_version=1', '-o', `publication_names=${pipeline.publication}`, '-f', '/dev/null', '--no-loop'],
    { stdio: 'inherit' },
  );
  if (drained.status !== 0) throw new Error('pg_recvlogical failed');
  const rawSeconds = (performance.now() - rawStarted) / 1000;
  await pgServer.query(`SELECT pg_drop_replication_slot('${rawSlot}')`);

  const started = performance.now();
  producer = pipeline.producer();
  const peak = sampleRss(producer);
  await waitForSlotAt(pgServer, pipeline.slot, end, 30 * 60_000);
  const seconds = (performance.now() - started) / 1000;
  const producerPeakMb = peak();
  await Promise.all([producer.stop(), consumer.stop()]);
  return { name: 'CDC changes/s', count: CHANGES, seconds, rawSeconds, rawName: 'pg_recvlogical drain', producerPeakMb };
}

async function timeRawCopy(table: string): Promise<number> {
  const client = new pg.Client({ connectionString: pgServer.url });
  await client.connect();
  const started = performance.now();
  const stream = client.query(copyStreams.to(`COPY ${table} TO STDOUT`));
  for await (const chunk of stream as AsyncIterable<Buffer>) void chunk;
  const seconds = (performance.now() - started) / 1000;
  await client.end();
  return seconds;
}

/** Samples a child's resident set size; returns a function giving the peak in MB. */
function sampleRss(child: CliProcess): () => number {
  let peak = 0;
  const timer = setInterval(() => {
    try {
      const status = readFileSync(`/proc/${child.child.pid}/status`, 'utf8');
      const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      peak = Math.max(peak, kb / 1024);
    } catch {
      // the process has exited
    }
  }, 100);
  child.exited.then(() => clearInterval(timer));
  return () => {
    clearInterval(timer);
    return Math.round(peak);
  };
}

function report(all: Result[]): void {
  const machine = `${cpus().length} × ${cpus()[0]?.model.trim()}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}, PostgreSQL ${postgresVersion()}`;
  const rows = all.map((result) => {
    const rate = result.count / result.seconds;
    const raw = result.count / result.rawSeconds;
    return `| ${result.name} | ${result.count.toLocaleString('en-US')} | ${Math.round(rate).toLocaleString('en-US')} | ${Math.round(raw).toLocaleString('en-US')} (${result.rawName}) | ${(rate / raw).toFixed(2)} | ${result.producerPeakMb ?? '–'} MB |`;
  });
  const table = [
    `Measured ${new Date().toISOString().slice(0, 10)} on ${machine}.`,
    '',
    '| what | count | pg-replicate → DuckDB | raw Postgres rate, same data | ratio | producer peak RSS |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
  ].join('\n');
  process.stdout.write(`${table}\n`);
  const readmePath = join(process.cwd(), 'README.md');
  const readme = readFileSync(readmePath, 'utf8');
  const start = '<!-- bench:start -->';
  const end = '<!-- bench:end -->';
  if (readme.includes(start) && readme.includes(end)) {
    writeFileSync(readmePath, `${readme.slice(0, readme.indexOf(start) + start.length)}\n${table}\n${readme.slice(readme.indexOf(end))}`);
    process.stderr.write('README.md updated\n');
  }
}

function postgresVersion(): string {
  try {
    return execFileSync('pg_config', ['--version']).toString().trim().replace('PostgreSQL ', '');
  } catch {
    return 'unknown';
  }
}
