import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import test from 'ava';
import { Redis } from 'ioredis';
import { CliProcess, killStrayProcesses, names, runCli, waitFor } from './support/pipeline.js';
import { freePort, type PostgresServer, type RedisServer, spawnRedis, startPostgres, startRedis } from './support/services.js';

let pg: PostgresServer;
let replicaOnly: PostgresServer;
let redis: RedisServer;

test.before(async () => {
  [pg, replicaOnly, redis] = await Promise.all([startPostgres(), startPostgres({ walLevel: 'replica' }), startRedis()]);
});
test.after.always(async () => {
  await killStrayProcesses();
  await Promise.all([pg?.stop(), replicaOnly?.stop(), redis?.stop()]);
});

const producer = (pgUrl: string, extra: string[] = []) => {
  const { pipeline, slot, publication } = names('cli');
  return [
    'producer',
    '--pg-url',
    pgUrl,
    '--redis-url',
    redis.url,
    '--pipeline',
    pipeline,
    '--slot',
    slot,
    '--publication',
    publication,
    '--destinations',
    'a',
    ...extra,
  ];
};

test('--help works on every command', async (t) => {
  for (const command of [
    [],
    ['producer'],
    ['consumer'],
    ['consumer', 'duckdb'],
    ['consumer', 'bigquery'],
    ['consumer', 'postgres'],
    ['consumer', 'stdout'],
    ['run'],
    ['status'],
  ]) {
    const result = await runCli([...command, '--help']);
    t.is(result.code, 0, command.join(' '));
    t.regex(result.stdout, /Usage: pg-replicate/, command.join(' '));
  }
});

test('--version prints the version; help marks required flags and shows sizes as people write them; sizes are read with units', async (t) => {
  const version = await runCli(['--version']);
  t.is(version.code, 0);
  t.is(version.stdout.trim(), JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version);
  const producer = (await runCli(['producer', '--help'])).stdout.replace(/\s+/g, ' ');
  for (const flag of ['--pg-url', '--publication', '--slot', '--pipeline', '--redis-url'])
    t.regex(producer, new RegExp(`${flag} <\\w+> [^-]*\\(required\\)`), flag);
  t.regex(producer, /--max-batch-bytes <size> .*\(default: 8 MiB\)/);
  t.regex(producer, /--max-backlog-bytes <size> .*\(default: 256 MiB\)/);
  t.regex((await runCli(['consumer', 'duckdb', '--help'])).stdout.replace(/\s+/g, ' '), /--path <file> [^-]*\(required\)/);
  const bad = await runCli(['producer', '--max-batch-bytes', 'lots']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /expected a size in bytes, e\.g\. 8388608, 8MiB or 8MB \(got "lots"\)/);
});

test('logs are JSON lines with ISO times off a terminal, and readable lines with --log-format pretty', async (t) => {
  const waiting = async (format: string) => {
    const consumer = new CliProcess(['consumer', 'stdout', '--name', 'x', '--pipeline', 'not-started', '--redis-url', redis.url, '--log-format', format]);
    await waitFor('the consumer to log that it waits', async () => consumer.stderr.includes('waiting for the producer'));
    await consumer.stop();
    return consumer.stderr;
  };
  const json = (await waiting('json')).split('\n').filter((line) => line.startsWith('{'));
  t.true(json.length > 0);
  for (const line of json) t.regex(JSON.parse(line).time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  t.regex(await waiting('pretty'), /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO[^:]*: waiting for the producer of this pipeline to start/m);
});

test('after npm run build the CLI runs as npx pg-replicate', async (t) => {
  const result = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
    execFile('npx', ['--no-install', 'pg-replicate', 'producer', '--help'], (error, stdout) => resolve({ code: error ? (error.code as number) : 0, stdout }));
  });
  t.is(result.code, 0);
  t.regex(result.stdout, /Usage: pg-replicate producer/);
});

test('an unknown flag exits 2 and says so', async (t) => {
  const result = await runCli(['producer', '--no-such-flag']);
  t.is(result.code, 2);
  t.regex(result.stderr, /unknown option '--no-such-flag'/);
});

test('missing and malformed flags exit 2 naming each flag', async (t) => {
  const result = await runCli(['producer', '--pg-url', 'mysql://x', '--slot', 'Bad-Slot', '--heap-mb', '16'], {
    PG_URL: '',
    REDIS_URL: '',
    PIPELINE_ID: '',
    PUBLICATION: '',
    SLOT: '',
    DESTINATIONS: '',
  });
  t.is(result.code, 2);
  t.regex(result.stderr, /--heap-mb must be at least 48/);
  t.regex(result.stderr, /--pg-url \(PG_URL\) must be a URL starting with postgres:\/\//);
  t.regex(result.stderr, /--redis-url \(REDIS_URL\) is required/);
  t.regex(result.stderr, /--slot \(SLOT\) may use only lower-case letters/);
});

test('an unreachable Postgres exits 2 with advice and without the password', async (t) => {
  const port = await freePort();
  const result = await runCli(producer(`postgres://replicator:sup3r-secret@127.0.0.1:${port}/db`));
  t.is(result.code, 2);
  t.regex(result.stderr, /Cannot connect to Postgres .*Check --pg-url/);
  t.false(result.stderr.includes('sup3r-secret'));
});

test('wal_level other than logical exits 2 with the setting to change', async (t) => {
  const result = await runCli(producer(replicaOnly.url));
  t.is(result.code, 2);
  t.regex(result.stderr, /wal_level=replica, but logical replication needs wal_level=logical/);
});

test('a missing publication exits 2 with the statement to create it', async (t) => {
  const result = await runCli(producer(pg.url));
  t.is(result.code, 2);
  t.regex(result.stderr, /Publication "p_cli_\w+" does not exist.*CREATE PUBLICATION/);
});

test('an unreachable Redis exits 2', async (t) => {
  await pg.query('CREATE PUBLICATION p_redis_down FOR ALL TABLES');
  const port = await freePort();
  const args = producer(pg.url, ['--redis-url', `redis://:pw-secret@127.0.0.1:${port}`, '--publication', 'p_redis_down']);
  const result = await runCli(args);
  t.is(result.code, 2);
  t.regex(result.stderr, /Cannot reach Redis/);
  t.false(result.stderr.includes('pw-secret'));
});

test('status, destinations and resync with Redis unreachable, or refusing the password, exit 2 at once with advice and without the password', async (t) => {
  const port = await freePort();
  for (const command of [['status'], ['destinations', 'list'], ['resync', '--all']]) {
    const down = await runCli([...command, '--pipeline', 'p', '--redis-url', `redis://:pw-secret@127.0.0.1:${port}`]);
    t.is(down.code, 2, `${command.join(' ')}: ${down.stderr}`);
    t.regex(down.stderr, /Cannot reach Redis \(.*ECONNREFUSED.*\)\. Check --redis-url/);
    t.false(down.stderr.includes('pw-secret'));
  }
  // TLS asked of a Redis that does not speak it: exit 2 once the 3 s connect timeout passes,
  // saying so (consumers too). About 5 s in all on an idle machine; the bound leaves room for
  // the CLI's own start, which takes seconds on a loaded 2-core CI machine.
  const started = Date.now();
  const plain = await runCli(['consumer', 'stdout', '--name', 'x', '--pipeline', 'p', '--redis-url', redis.url.replace('redis://', 'REDISS://')]);
  t.is(plain.code, 2, plain.stderr);
  t.true(Date.now() - started < 15_000, `answered in ${Date.now() - started} ms`);
  t.regex(plain.stderr, /Cannot reach Redis .* that it speaks TLS on that port/);
  // A Redis of its own that wants another password.
  const guarded = await spawnRedis(port, ['--save', '', '--appendonly', 'no']);
  try {
    const admin = new Redis({ port, host: '127.0.0.1' });
    await admin.config('SET', 'requirepass', 'the-right-one');
    admin.disconnect();
    const refused = await runCli(['status', '--pipeline', 'p', '--redis-url', `redis://:pw-secret@127.0.0.1:${port}`]);
    t.is(refused.code, 2, refused.stderr);
    t.regex(refused.stderr, /Check the user and password in --redis-url/);
    t.false(refused.stderr.includes('pw-secret'));
  } finally {
    await guarded.kill();
  }
});

test('status of an unknown pipeline exits 2', async (t) => {
  const result = await runCli(['status', '--pipeline', 'nope', '--redis-url', redis.url]);
  t.is(result.code, 2);
  t.regex(result.stderr, /Redis has no pipeline "nope"/);
});

test('a DuckDB path that cannot be opened exits 2', async (t) => {
  const result = await runCli(['consumer', 'duckdb', '--name', 'x', '--pipeline', 'p', '--redis-url', redis.url, '--path', '/nonexistent/dir/x.duckdb']);
  t.is(result.code, 2);
  t.regex(result.stderr, /Cannot open DuckDB database \/nonexistent\/dir\/x.duckdb/);
});
