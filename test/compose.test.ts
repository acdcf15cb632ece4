import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { parse } from 'yaml';
import { CliProcess, currentWalLsn, duckdbRows, postgresRows, tempDir, waitFor, waitForSlotAt } from './support/pipeline.js';
import { freePort, useServices } from './support/services.js';

/**
 * No Docker engine runs here, so this test checks docker-compose.yml by carrying it out by hand:
 * the demo SQL goes into our own Postgres, and every service built from our image runs as a
 * process with that service's command and environment (hosts and volumes mapped to local ones).
 */
const ROOT = join(process.cwd());
const compose = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8'));
const services: Record<
  string,
  {
    build?: string;
    image?: string;
    command: string[];
    environment?: Record<string, string>;
    volumes?: string[];
    depends_on?: unknown;
    profiles?: string[];
    ports?: string[];
  }
> = compose.services;

const env = useServices(test);

test('the compose file has Postgres with wal_level=logical, Redis, the producer and both consumers, and its references resolve', (t) => {
  t.deepEqual(Object.keys(services).sort(), ['bigquery', 'demo-traffic', 'duckdb', 'postgres', 'producer', 'redis', 'serve', 'stdout']);
  t.deepEqual(services.serve.ports, ['127.0.0.1:8080:8080'], "the page and the API are published on the host's loopback only");
  t.deepEqual(services.bigquery.profiles, ['bigquery'], 'BigQuery (which needs credentials) starts only with --profile bigquery');
  t.deepEqual(services.bigquery.command.slice(0, 2), ['consumer', 'bigquery']);
  t.true(services.postgres.command.includes('wal_level=logical'));
  for (const [name, service] of Object.entries(services)) {
    t.true(Boolean(service.build ?? service.image), `${name} has an image or a build`);
    if (service.build) t.true(existsSync(join(ROOT, service.build, 'Dockerfile')), `${name}'s build context has a Dockerfile`);
    const dependencies = Array.isArray(service.depends_on) ? service.depends_on : Object.keys(service.depends_on ?? {});
    for (const dependency of dependencies) t.truthy(services[dependency], `${name} depends on existing service ${dependency}`);
    for (const volume of service.volumes ?? []) {
      const source = volume.split(':')[0];
      if (source.startsWith('${')) continue; // the user's own file, named by an environment variable
      if (source.startsWith('.')) t.true(existsSync(join(ROOT, source)), `${name} mounts existing ${source}`);
      else t.true(source in (compose.volumes ?? {}), `${name} uses declared volume ${source}`);
    }
  }
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  // Every source the build stage copies exists (npm run build also runs scripts/).
  for (const [, source] of dockerfile.matchAll(/^COPY (?!--from)(\S+) /gm)) t.true(existsSync(join(ROOT, source)), `Dockerfile copies existing ${source}`);
  for (const script of ['scripts/link-bin.mjs']) t.regex(dockerfile, new RegExp(`COPY ${script.split('/')[0]} `), `the image build has ${script}`);
  t.regex(dockerfile, /ENTRYPOINT \["node", "dist\/cli\/index.js"\]/);
  t.true(existsSync(join(ROOT, 'dist', 'cli', 'index.js')));
});

test('the compose services, run as processes, replicate the demo data and traffic', async (t) => {
  await env.pg.query(readFileSync(join(ROOT, 'demo', 'init.sql'), 'utf8'));
  const data = tempDir();
  const local = (text: string) =>
    text
      .replace(/^postgres:\/\/.*$/, env.pg.url)
      .replace(/^redis:\/\/.*$/, env.redis.url)
      .replace(/^\/data\//, `${data}/`);
  // Each service's metrics port (one in every container) becomes a free port of this host.
  const metricsPorts: number[] = [];
  let servePort = 0;
  const run = async (name: string) => {
    const service = services[name];
    const environment = Object.fromEntries(Object.entries(service.environment ?? {}).map(([key, value]) => [key, local(String(value))]));
    if (environment.METRICS_PORT) metricsPorts.push(Number((environment.METRICS_PORT = String(await freePort()))));
    if (environment.PGR_PORT) environment.PGR_PORT = String((servePort = await freePort()));
    return new CliProcess(service.command.map(local), environment);
  };
  const processes = [await run('producer'), await run('duckdb'), await run('stdout'), await run('serve')];
  const [, , stdout, serve] = processes;
  const running = () => {
    for (const process of processes) if (process.endedOnItsOwn) throw new Error(process.endedOnItsOwn);
  };
  try {
    const pipeline = services.producer.environment!.PIPELINE_ID;
    await waitFor('the demo copy', async () => {
      running();
      return (await env.redis.client.hget(`pgr:{${pipeline}}:state`, 'copy')) === 'done';
    });
    // The server starts beside the others, and under load it may answer only after the copy.
    await waitFor('the server to serve', async () => {
      running();
      return serve.stderr.includes('serving the API and the status page');
    });
    for (let round = 0; round < 5; round++) await env.pg.query(readFileSync(join(ROOT, 'demo', 'write.sql'), 'utf8'));
    await waitForSlotAt(env.pg, services.producer.environment!.SLOT, await currentWalLsn(env.pg));
    const [producerMetrics, duckdbMetrics] = await Promise.all(
      metricsPorts.map((port) => fetch(`http://127.0.0.1:${port}/metrics`).then((response) => response.text())),
    );
    t.regex(producerMetrics, /^pg_replicate_changes_total\{operation="insert"\} [1-9]/m, 'the producer serves its metrics');
    t.regex(duckdbMetrics, /^pg_replicate_changes_applied_total\{destination="analytics"\} [1-9]/m, 'the DuckDB consumer serves its metrics');
    // The server shows the pipeline the other services run, with its slot's lag.
    const shown = (await (await fetch(`http://127.0.0.1:${servePort}/api/pipelines/${pipeline}`)).json()) as {
      status: { slotLagBytes: number; destinations: unknown[] };
    };
    t.is(typeof shown.status.slotLagBytes, 'number');
    t.is(shown.status.destinations.length, 2);
    t.is((await fetch(`http://127.0.0.1:${servePort}/`)).status, 200, 'the status page');
  } finally {
    await Promise.all(processes.map((process) => process.stop()));
  }
  const path = join(data, 'analytics.duckdb');
  t.deepEqual(await duckdbRows(path, 'public.customers', ['id', 'name', 'email']), await postgresRows(env.pg, 'customers', ['id', 'name', 'email']));
  t.deepEqual(
    await duckdbRows(path, 'public.orders', ['id', 'customer_id', 'amount', 'status']),
    await postgresRows(env.pg, 'orders', ['id', 'customer_id', 'amount', 'status']),
  );
  const lines = stdout.stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line));
  t.true(lines.filter((line) => line.table === 'public.orders' && !line.backfill).length >= 5);
  t.true(lines.some((line) => line.table === 'public.customers' && line.backfill && line.row.email === 'customer1@example.com'));
});
