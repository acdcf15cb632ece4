import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { runCli, tempDir } from './support/pipeline.js';
import { useServices } from './support/services.js';

/**
 * Wrong flags, URLs, names and files, as a new or a hostile user gives them: each exits 2 with
 * advice naming what is wrong, prints no secret, and leaves no Redis key and no slot behind.
 */
const env = useServices(test);

test('wrong input to every command exits 2 with a named reason, no secret, and nothing left behind', async (t) => {
  const redis = env.redis.url;
  const pg = env.pg.url.replace('postgres@', 'postgres:hunter2-secret@');
  const dir = tempDir();
  const yaml = join(dir, 'broken.yaml');
  writeFileSync(yaml, 'pipeline: [unclosed\n');
  const producer = (...extra: string[]) => [
    'producer',
    '--pg-url',
    pg,
    '--redis-url',
    redis,
    '--pipeline',
    'adv',
    '--slot',
    'adv_slot',
    '--publication',
    'adv_pub',
    ...extra,
  ];
  const cases: [string, string[], RegExp][] = [
    [
      'a MySQL URL',
      ['producer', '--pg-url', 'mysql://u:hunter2-secret@db/x', '--redis-url', redis, '--pipeline', 'adv', '--slot', 's', '--publication', 'p'],
      /--pg-url \(PG_URL\) must be a URL starting with postgres:\/\/ or postgresql:\/\//,
    ],
    ['an HTTP Redis URL', ['status', '--pipeline', 'adv', '--redis-url', 'http://u:hunter2-secret@cache:6379'], /--redis-url \(REDIS_URL\) must be redis:\/\//],
    ['a slot with capitals', producer().map((arg) => (arg === 'adv_slot' ? 'Adv-Slot' : arg)), /--slot \(SLOT\) may use only lower-case letters, digits and _/],
    ['a pipeline id with a space', ['status', '--pipeline', 'a b', '--redis-url', redis], /--pipeline \(PIPELINE_ID\) may use only letters, digits, _ and -/],
    ['a pipeline id with a Redis hash tag', ['status', '--pipeline', 'x}{y', '--redis-url', redis], /--pipeline \(PIPELINE_ID\) may use only/],
    ['a pipeline id of 65 characters', ['status', '--pipeline', 'p'.repeat(65), '--redis-url', redis], /at most 64/],
    ['zero partitions', producer('--partitions', '0'), /Invalid configuration: --partitions: Too small: expected number to be >0/],
    ['two thousand partitions', producer('--partitions', '2000'), /--partitions: Too big: expected number to be <=1024/],
    ['partitions that are not a number', producer('--partitions', 'eight'), /--partitions: Invalid input: expected number/],
    ['a negative batch size', producer('--max-batch-changes', '-5'), /--max-batch-changes: Too small/],
    ['an unknown mode', producer('--mode', 'sideways'), /argument 'sideways' is invalid\. Allowed choices are both, copy, cdc/],
    ['a metrics port out of range', producer('--metrics-port', '70000'), /--metrics-port \(METRICS_PORT\) must be between 1 and 65535/],
    ['a heap too small', producer('--heap-mb', '10'), /--heap-mb must be at least 48/],
    ['a destination name with a slash', producer('--destinations', 'good,../bad'), /each of --destinations may use only letters, digits, _ and -/],
    [
      'a DuckDB setting without a value',
      ['consumer', 'duckdb', '--name', 'x', '--pipeline', 'adv', '--redis-url', redis, '--path', join(dir, 'x.duckdb'), '--setting', 'memory_limit'],
      /expected name=value/,
    ],
    [
      'an unknown DuckDB setting',
      ['consumer', 'duckdb', '--name', 'x', '--pipeline', 'adv', '--redis-url', redis, '--path', join(dir, 'y.duckdb'), '--setting', 'memory_limt=1GB'],
      /not recognized: memory_limt/,
    ],
    [
      'a BigQuery project with a space',
      ['consumer', 'bigquery', '--name', 'x', '--pipeline', 'adv', '--redis-url', redis, '--project', 'my project', '--dataset', 'd'],
      /--project must be a Google Cloud project id/,
    ],
    [
      'a BigQuery dataset with a dash',
      ['consumer', 'bigquery', '--name', 'x', '--pipeline', 'adv', '--redis-url', redis, '--project', 'p-1', '--dataset', 'my-data'],
      /--dataset may use only letters, digits and _/,
    ],
    ['resync with neither --table nor --all', ['resync', '--pipeline', 'adv', '--redis-url', redis], /resync needs either --table schema\.name .* or --all/],
    [
      'resync --all for one destination',
      ['resync', '--all', '--destination', 'x', '--pipeline', 'adv', '--redis-url', redis],
      /--destination goes with --table/,
    ],
    ['status of a pipeline that does not exist', ['status', '--pipeline', 'never-ran', '--redis-url', redis], /Redis has no pipeline "never-ran"/],
    [
      'destinations add to a pipeline that does not exist',
      ['destinations', 'add', 'x', '--pipeline', 'never-ran', '--redis-url', redis],
      /Redis has no pipeline "never-ran"/,
    ],
    [
      'pipeline drop of a pipeline that does not exist',
      ['pipeline', 'drop', '--yes', '--pipeline', 'never-ran', '--redis-url', redis, '--pg-url', pg],
      /Redis has no pipeline "never-ran"/,
    ],
    ['an unknown command', ['replicate-everything'], /unknown command 'replicate-everything'/],
    ['an unknown flag', ['status', '--pipline', 'adv', '--redis-url', redis], /unknown option '--pipline'/],
    ['a config file that is not YAML', ['run', '--config', yaml], /--config \S+ is not valid YAML/],
    ['a config file that does not exist', ['run', '--config', join(dir, 'missing.yaml')], /Cannot read --config/],
    ['a publication that does not exist', producer(), /Publication "adv_pub" does not exist .* CREATE PUBLICATION adv_pub FOR TABLE/],
    [
      'a Postgres that refuses the database',
      ['producer', '--pg-url', env.pg.url.replace(/\/[^/]*$/, '/no_such_db'), '--redis-url', redis, '--pipeline', 'adv', '--slot', 's', '--publication', 'p'],
      /database "no_such_db" does not exist\. Check the database name in --pg-url/,
    ],
    [
      'a Redis password where none is set',
      ['status', '--pipeline', 'adv', '--redis-url', redis.replace('redis://', 'redis://:hunter2-secret@')],
      /Cannot reach Redis|Redis has no pipeline/,
    ],
  ];
  const keysBefore = await env.redis.client.dbsize();
  const failures: string[] = [];
  for (const [name, args, expected] of cases) {
    const result = await runCli(args);
    const output = result.stdout + result.stderr;
    if (result.code !== 2) failures.push(`${name}: exit ${result.code}: ${output.slice(-300)}`);
    else if (!expected.test(result.stderr)) failures.push(`${name}: ${result.stderr.slice(-300)}`);
    if (output.includes('hunter2-secret')) failures.push(`${name}: printed the password`);
    if (/\n\s+at .+\(.*:\d+:\d+\)/.test(output)) failures.push(`${name}: printed a stack trace`);
  }
  t.deepEqual(failures, [], `${cases.length} cases`);
  t.is(await env.redis.client.dbsize(), keysBefore, 'no Redis key left behind');
  t.is((await env.pg.query('SELECT count(*)::int AS n FROM pg_replication_slots')).rows[0].n, 0, 'no slot left behind');
});
