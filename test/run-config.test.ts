import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { CliProcess, duckdbRows, postgresRows, runCli, TestPipeline, waitFor } from './support/pipeline.js';
import { freePort, useServices } from './support/services.js';

const env = useServices(test);

test('run --config runs the producer and both consumers in one process, with ${ENV} expansion', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'runcfg', []);
  await env.pg.query(
    `CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'one'); CREATE PUBLICATION ${pipeline.publication} FOR TABLE notes;`,
  );
  const config = join(pipeline.dir, 'pipeline.yaml');
  const path = join(pipeline.dir, 'notes.duckdb');
  const metricsPort = await freePort();
  writeFileSync(
    config,
    `pipeline: ${pipeline.pipeline}
pgUrl: \${TEST_PG_URL}
redisUrl: \${TEST_REDIS_URL}
publication: ${pipeline.publication}
slot: ${pipeline.slot}
metricsPort: ${metricsPort}
destinations:
  - { type: duckdb, name: warehouse, path: ${path} }
  - { type: stdout, name: console }
`,
  );
  const run = new CliProcess(['run', '--config', config], { TEST_PG_URL: env.pg.url, TEST_REDIS_URL: env.redis.url });
  try {
    await pipeline.waitForCopy(env.redis.client);
    await env.pg.query("INSERT INTO notes VALUES (2, 'two'); UPDATE notes SET body = 'uno' WHERE id = 1");
    await pipeline.waitForCatchUp();
    const status = await runCli(['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url, '--pg-url', env.pg.url]);
    t.is(status.code, 0);
    t.regex(status.stdout, /destination warehouse: ok, applied up to [0-9A-F]+\/[0-9A-F]+, 0 batches pending/);
    t.regex(status.stdout, /slot confirmed flush LSN [0-9A-F]+\/[0-9A-F]+ \(producer connected\)/);
    // One port for the process: the producer's metrics and every destination's (counted just after the slot hears).
    const metrics = await waitFor("both destinations' metrics", async () => {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      return ['console', 'warehouse'].every((name) => new RegExp(`^pg_replicate_changes_applied_total\\{destination="${name}"\\} 2$`, 'm').test(text)) && text;
    });
    t.regex(metrics, /^pg_replicate_changes_total\{operation="update"\} 1$/m);
  } finally {
    await run.stop();
  }
  t.deepEqual(await duckdbRows(path, 'public.notes', ['id', 'body']), await postgresRows(env.pg, 'notes', ['id', 'body']));
  await waitFor('stdout lines', async () => run.stdout.includes('"uno"'));
  t.regex(run.stdout, /\{"table":"public.notes","op":"update","lsn":"[0-9A-F/]+","row":\{"id":1,"body":"uno"\}\}/);
});

test('run --config with a bad file exits 2 and says what is wrong', async (t) => {
  const dir = new TestPipeline(env.pg, env.redis.url, 'badcfg', []).dir;
  const config = join(dir, 'bad.yaml');
  writeFileSync(config, 'pipeline: x\ndestinations: []\n');
  const result = await runCli(['run', '--config', config]);
  t.is(result.code, 2);
  t.regex(result.stderr, /destinations: at least one destination is needed/);
  // Each problem named by its key path; a mistyped key is an error with the key it resembles.
  writeFileSync(
    config,
    `pipeline: x
pgUrl: \${TEST_PG_URL}
redisUrl: redis://localhost
publication: p
slot: s
partitons: 4
destinations:
  - { type: duckdb, name: a, pth: /tmp/a.duckdb }
  - { type: snowflake, name: b }
  - { type: bigquery, name: c, project: p, datset: d }
`,
  );
  const typos = await runCli(['run', '--config', config], { TEST_PG_URL: 'mysql://db' });
  t.is(typos.code, 2);
  for (const problem of [
    /^ {2}pgUrl: must be a URL starting with postgres:\/\/ or postgresql:\/\/$/m,
    /^ {2}partitons: unknown key \(did you mean "partitions"\?\)$/m,
    /^ {2}destinations\[0\]\.pth: unknown key \(did you mean "path"\?\)$/m,
    /^ {2}destinations\[0\]\.path: is required$/m,
    /^ {2}destinations\[1\]\.type: .*'bigquery' \| 'duckdb' \| 'postgres' \| 'stdout'/m,
    /^ {2}destinations\[2\]\.datset: unknown key \(did you mean "dataset"\?\)$/m,
  ]) {
    t.regex(typos.stderr, problem);
  }
  // An unset variable is an error naming it, never an empty value; ${NAME:-default} gives a default.
  const unset = await runCli(['run', '--config', config], { TEST_PG_URL: '' });
  t.is(unset.code, 2);
  t.regex(unset.stderr, /uses \$\{TEST_PG_URL\}, but TEST_PG_URL is not set in the environment/);
  writeFileSync(config, `pipeline: x\npgUrl: \${TEST_PG_URL:-postgres://db/app}\nredisUrl: redis://localhost\npublication: p\nslot: s\ndestinations: []\n`);
  const defaulted = await runCli(['run', '--config', config], { TEST_PG_URL: '' });
  t.is(defaulted.code, 2);
  t.notRegex(defaulted.stderr, /pgUrl/);
  const missing = await runCli(['run', '--config', join(dir, 'missing.yaml')]);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /Cannot read --config/);
});
