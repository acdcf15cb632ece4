import { existsSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { chromium } from 'playwright-core';
import { CliProcess, TestPipeline, waitFor } from './support/pipeline.js';
import { freePort, useServices } from './support/services.js';

const env = useServices(test);

/** Debian's Chromium (`apt-get install chromium`), or the one CHROMIUM_PATH names. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

test('the status page shows each pipeline live in Chromium: plots with points, a parked partition with its error, a finished copy at 100 %; the queue board lists the queues, read-only', async (t) => {
  if (!existsSync(CHROMIUM)) throw new Error(`no browser at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM_PATH`);
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'paged', []);
  await env.pg.query(`CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 2000) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE items; CREATE ROLE pagewriter LOGIN;`);
  await env.pg.query('CREATE DATABASE pagetarget OWNER pagewriter');
  const target = new URL(env.pg.url);
  target.username = 'pagewriter';
  target.pathname = '/pagetarget';
  const port = await freePort();
  const server = new CliProcess(['serve', '--port', String(port), '--redis-url', env.redis.url, '--sample-seconds', '1']);
  const base = `http://127.0.0.1:${port}`;
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--headless=new'] });
  try {
    await waitFor('the server to listen', async () => server.stderr.includes('serving the API'));
    const created = await fetch(`${base}/api/pipelines`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        pipeline: pipeline.pipeline,
        pgUrl: env.pg.url,
        redisUrl: env.redis.url,
        publication: pipeline.publication,
        slot: pipeline.slot,
        destinations: [
          { type: 'duckdb', name: 'warehouse', path: join(pipeline.dir, 'paged.duckdb') },
          { type: 'postgres', name: 'mirror', url: target.toString() },
        ],
      }),
    });
    t.is(created.status, 201, await created.text());
    await pipeline.waitForCopy(env.redis.client);
    // The mirror's writer loses its table: its partition parks on "permission denied", the warehouse goes on.
    const admin = new URL(env.pg.url);
    admin.pathname = '/pagetarget';
    const { default: pg } = await import('pg');
    const client = new pg.Client({ connectionString: admin.toString() });
    await client.connect();
    await client.query('ALTER TABLE public.items OWNER TO postgres');
    await client.end();
    for (let round = 0; round < 5; round++)
      await env.pg.query(`INSERT INTO items SELECT g, 'new' FROM generate_series(${3000 + round * 100}, ${3099 + round * 100}) g`);

    const page = await browser.newPage();
    await page.goto(base);
    const section = page.locator(`section[data-pipeline="${pipeline.pipeline}"]`);
    const parked = section.locator('tr.partition[data-destination="mirror"]');
    await parked.waitFor({ timeout: 60_000 });
    t.regex((await parked.textContent()) ?? '', /permission denied for table items/);
    t.is(await section.locator('tr[data-destination="mirror"] .state').first().textContent(), 'parked');
    t.is(await section.locator('tr[data-destination="warehouse"] .state').textContent(), 'ok');
    t.is(await section.locator('tr[data-table="public.items"] .percent').textContent(), '100 %');
    // Samples every second: the plots fill as the page refreshes.
    await page.waitForFunction(
      (id) => {
        const points = (name: string) =>
          Number(document.querySelector(`section[data-pipeline="${id}"] [data-plot="${name}"]`)?.getAttribute('data-points') ?? 0);
        return points('lag') >= 3 && points('throughput') >= 3;
      },
      pipeline.pipeline,
      { timeout: 30_000 },
    );
    t.is(await section.locator('[data-plot="lag"] canvas').count(), 1, 'uPlot drew the lag');
    t.regex((await section.locator('[data-plot="throughput"]').textContent()) ?? '', /warehouse changes\/s/);

    // The queues in bull-board, read-only: a change by hand is refused.
    const queues = (await (await fetch(`${base}/queues/api/queues`)).json()) as { queues: { name: string; readOnlyMode: boolean }[] };
    const ours = queues.queues.filter((queue) => queue.name.startsWith(`{${pipeline.pipeline}.`));
    t.is(ours.length, 16, 'every partition of both destinations');
    t.true(ours.every((queue) => queue.readOnlyMode));
    const paused = await fetch(`${base}/queues/api/queues/${encodeURIComponent(ours[0].name)}/pause`, { method: 'PUT' });
    t.is(paused.status, 405);
    await page.goto(`${base}/queues/`);
    await page.getByText(ours[0].name).first().waitFor({ timeout: 30_000 });
  } finally {
    await browser.close();
    await server.stop();
  }
});
