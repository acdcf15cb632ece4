import { join } from 'node:path';
import test from 'ava';
import { CliProcess, currentWalLsn, duckdbRows, names, postgresRows, storedChunks, TestPipeline, tempDir, waitFor, waitForSlotAt } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

const ORDER_COLUMNS = ['region', 'order_id', 'customer', 'amount', 'paid', 'note'];
const ITEM_COLUMNS = ['id', 'sku', 'qty'];

test('copies a publication of several tables, then streams inserts, updates, deletes and truncate into DuckDB and stdout', async (t) => {
  const { pipeline, slot, publication } = names('e2e');
  await env.pg.query(`
    CREATE TABLE orders (region text, order_id bigint, customer text, amount numeric(12,2), paid boolean, note text, PRIMARY KEY (region, order_id));
    CREATE TABLE items (id serial PRIMARY KEY, sku text NOT NULL, qty int);
    CREATE TABLE not_published (id int PRIMARY KEY);
    INSERT INTO orders SELECT (ARRAY['eu','us','apac'])[1 + g % 3], g, 'customer ' || g, g * 1.25, g % 2 = 0, CASE WHEN g % 5 = 0 THEN NULL ELSE E'line\\twith\\nescapes ' || g END FROM generate_series(1, 30000) g;
    INSERT INTO items (sku, qty) SELECT 'sku-' || g, g FROM generate_series(1, 5000) g;
    CREATE PUBLICATION ${publication} FOR TABLE orders, items;
  `);
  const dir = tempDir();
  const path = join(dir, 'analytics.duckdb');
  const common = ['--pipeline', pipeline, '--redis-url', env.redis.url];
  const producer = new CliProcess([
    'producer',
    '--pg-url',
    env.pg.url,
    '--publication',
    publication,
    '--slot',
    slot,
    '--destinations',
    'analytics,console',
    ...common,
  ]);
  const duckdb = new CliProcess(['consumer', 'duckdb', '--name', 'analytics', '--path', path, ...common]);
  const stdout = new CliProcess(['consumer', 'stdout', '--name', 'console', ...common]);
  try {
    await waitFor('the copy to be applied', async () => (await env.redis.client.hget(`pgr:{${pipeline}}:state`, 'copy')) === 'done');
    // Each destination releases a chunk right after recording it applied.
    await waitFor('every copy chunk to be released', async () => (await storedChunks(env.redis.client, pipeline)).length === 0);
    t.pass('once both destinations applied the copy, Redis holds none of its rows');
    await env.pg.query(`
      INSERT INTO orders VALUES ('eu', 100001, 'new customer', 10.50, false, 'fresh');
      UPDATE orders SET amount = amount + 1, note = 'updated' WHERE order_id % 7 = 0;
      UPDATE orders SET order_id = order_id + 1000000 WHERE order_id BETWEEN 10 AND 20;
      DELETE FROM orders WHERE order_id % 11 = 0;
      UPDATE items SET qty = qty * 2 WHERE id <= 100;
      DELETE FROM items WHERE id > 4000;
    `);
    await env.pg.query('BEGIN');
    await env.pg.query("INSERT INTO items (sku, qty) VALUES ('short-lived', 1)");
    await env.pg.query("DELETE FROM items WHERE sku = 'short-lived'");
    await env.pg.query('COMMIT');
    await env.pg.query('INSERT INTO not_published VALUES (1)');
    await waitForSlotAt(env.pg, slot, await currentWalLsn(env.pg));
    await env.pg.query('TRUNCATE items');
    await env.pg.query("INSERT INTO items (sku, qty) VALUES ('after-truncate', 7)");
    await waitForSlotAt(env.pg, slot, await currentWalLsn(env.pg));
    // The large update transactions above made batches whose records travel as chunks.
    await waitFor('every chunk of the stream to be released', async () => (await storedChunks(env.redis.client, pipeline)).length === 0);
  } finally {
    await Promise.all([producer.stop(), duckdb.stop(), stdout.stop()]);
  }
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');
  t.deepEqual(await duckdbRows(path, 'public.orders', ORDER_COLUMNS), await postgresRows(env.pg, 'orders', ORDER_COLUMNS));
  t.deepEqual(await duckdbRows(path, 'public.items', ITEM_COLUMNS), await postgresRows(env.pg, 'items', ITEM_COLUMNS));
  t.true((await postgresRows(env.pg, 'orders', ORDER_COLUMNS)).length > 27_000);

  const lines = stdout.stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line));
  const backfill = lines.filter((line) => line.backfill);
  t.deepEqual(
    { orders: backfill.filter((line) => line.table === 'public.orders').length, items: backfill.filter((line) => line.table === 'public.items').length },
    { orders: 30000, items: 5000 },
  );
  t.deepEqual(
    lines.find((line) => line.backfill && line.table === 'public.items' && line.row.id === 1),
    {
      table: 'public.items',
      op: 'insert',
      lsn: backfill[0].lsn,
      backfill: true,
      row: { id: 1, sku: 'sku-1', qty: 1 },
    },
  );
  const streamed = lines.filter((line) => !line.backfill);
  const inserted = streamed.find((line) => line.op === 'insert' && line.table === 'public.orders');
  t.deepEqual(inserted?.row, { region: 'eu', order_id: 100001, customer: 'new customer', amount: 10.5, paid: false, note: 'fresh' });
  t.regex(inserted!.lsn, /^[0-9A-F]+\/[0-9A-F]+$/);
  t.true(streamed.some((line) => line.op === 'update' && line.table === 'public.orders' && line.row.note === 'updated'));
  t.true(streamed.some((line) => line.op === 'delete' && line.table === 'public.items' && line.old.id === 4001 && !('sku' in line.old)));
  t.deepEqual(
    streamed.filter((line) => line.op === 'truncate').map((line) => line.table),
    ['public.items'],
  );
  t.is(streamed.at(-1).row.sku, 'after-truncate');
  t.false(lines.some((line) => line.table === 'public.not_published'));
});

test('a publication column list and row filter are honoured by the copy as by the stream', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'filtered', ['main']);
  await env.pg.query(`
    CREATE TABLE filtered (id int PRIMARY KEY, shown text, hidden text);
    INSERT INTO filtered SELECT g, 's' || g, 'h' || g FROM generate_series(1, 100) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE filtered (id, shown) WHERE (id > 50);
  `);
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    await env.pg.query(
      "INSERT INTO filtered SELECT g, 's' || g, 'h' || g FROM generate_series(101, 120) g; UPDATE filtered SET shown = 'changed' WHERE id IN (10, 60); DELETE FROM filtered WHERE id IN (20, 70);",
    );
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  t.notRegex(producer.stderr, /session ended/, 'the producer ran without a failure');
  t.deepEqual(
    await duckdbRows(pipeline.duckdbPath('main'), 'public.filtered', ['id', 'shown']),
    await postgresRows(env.pg, 'filtered WHERE id > 50', ['id', 'shown']),
  );
  await t.throwsAsync(duckdbRows(pipeline.duckdbPath('main'), 'public.filtered', ['hidden']), { message: /hidden/ });
});
