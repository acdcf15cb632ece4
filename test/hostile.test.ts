import test from 'ava';
import pg from 'pg';
import { type CliProcess, duckdbRows, postgresRows, rowsAsText, runCli, TestPipeline } from './support/pipeline.js';
import { startPostgres, useServices } from './support/services.js';

/**
 * Hostile data: names built to break quoting and to collide with pg-replicate's own columns,
 * the widest table Postgres allows, a 100 MB value in a copy, and logins Postgres refuses.
 * Each arrives exactly, or the command exits 2 with the advice and nothing left behind.
 */
const env = useServices(test);

/** A Postgres identifier, quoted. */
const quote = (name: string) => `"${name.replace(/"/g, '""')}"`;

test("hostile identifiers (quotes, semicolons, spaces, newlines, emoji, SQL words, 63 bytes, pg-replicate's own staging names) replicate exactly", async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'hostilenames', ['main']);
  const schema = 'we"ird; DROP SCHEMA public; --';
  const table = 'ta\'ble " . ; -- ö😀';
  const columns = ['id', '_pg_deleted', '_pg_row', '_pg_unchanged', 'sp ace', 'new\nline', 'a"b', "it's", 'select', 'ünï😀', 'x'.repeat(63), 'NULL', '\\N'];
  const target = `${quote(schema)}.${quote(table)}`;
  const definition = columns.map((name, index) => `${quote(name)} ${index === 0 ? 'int PRIMARY KEY' : 'text'}`).join(', ');
  const values = (id: number) =>
    `(${id}, ${columns
      .slice(1)
      .map((_, index) => `'v${id}.${index} \\N ''"'`)
      .join(', ')})`;
  await env.pg.query(`
    CREATE SCHEMA ${quote(schema)};
    CREATE TABLE ${target} (${definition});
    INSERT INTO ${target} VALUES ${values(1)}, ${values(2)}, ${values(3)};
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE ${target};`);
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  const stdout = pipeline.stdout('lines');
  try {
    await pipeline.waitForCopy(env.redis.client);
    await env.pg.query(`INSERT INTO ${target} VALUES ${values(4)}`);
    await env.pg.query(`UPDATE ${target} SET ${quote('_pg_deleted')} = 'true', ${quote('new\nline')} = NULL WHERE id = 1`);
    await env.pg.query(`DELETE FROM ${target} WHERE id = 2`);
    await env.pg.query(`UPDATE ${target} SET id = 20, ${quote('_pg_row')} = '7' WHERE id = 3`);
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop(), stdout.stop()]);
  }
  const quotedDuck = columns.map(quote);
  const expected = await postgresRows(env.pg, target, columns.map(quote));
  t.is(expected.length, 3);
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), target, quotedDuck), expected);
  const lines = stdout.stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line));
  const inserted = lines.find((line) => line.op === 'insert' && line.row.id === 4);
  t.is(inserted.table, `${schema}.${table}`);
  t.deepEqual(Object.keys(inserted.row), columns);
  t.is(inserted.row['new\nline'], 'v4.4 \\N \'"');
});

test("a table of 1 600 columns (Postgres' most) is copied and streamed exactly", async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'widest', ['main']);
  const columns = Array.from({ length: 1599 }, (_, index) => `c${index}`);
  await env.pg.query(`
    CREATE TABLE widest (id int PRIMARY KEY, ${columns.map((name, index) => `${name} ${['int', 'text', 'boolean', 'numeric'][index % 4]}`).join(', ')});
    INSERT INTO widest SELECT g, ${columns.map((_, index) => [`g + ${index}`, `'t' || g`, 'g % 2 = 0', index % 40 === 3 ? 'g / 7.0' : 'NULL'][index % 4]).join(', ')} FROM generate_series(1, 20) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE widest;`);
  await pipeline.runWithDuckdb(env.redis.client, async () => {
    await env.pg.query(
      `INSERT INTO widest SELECT g, ${columns.map((_, index) => [`g * ${index}`, 'NULL', 'true', index % 40 === 3 ? 'g / 3.0' : 'NULL'][index % 4]).join(', ')} FROM generate_series(21, 25) g`,
    );
    await env.pg.query("UPDATE widest SET c1 = 'updated', c1598 = NULL WHERE id % 3 = 0");
    await env.pg.query('DELETE FROM widest WHERE id = 5');
    await pipeline.waitForCatchUp();
  });
  const all = ['id', ...columns];
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.widest', all), await postgresRows(env.pg, 'widest', all));
});

test("a 100 MB value in a table copy arrives byte for byte (DuckDB's memory_limit is raised for it, then set back)", async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'hugecopy', ['main']);
  await env.pg.query(`
    CREATE TABLE hugecopy (id int PRIMARY KEY, body text);
    INSERT INTO hugecopy VALUES (1, 'small');
    INSERT INTO hugecopy SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, ${(100 * 1024 * 1024) / 32}) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE hugecopy;`);
  const { consumer } = await pipeline.runWithDuckdb(env.redis.client, async () => {
    await env.pg.query("UPDATE hugecopy SET body = body || 'x' WHERE id = 2");
    await pipeline.waitForCatchUp();
  });
  // The update's 100 MB line needs more than the room made for its CSV buffer: the batch is
  // applied again under a higher limit, which is then set back to 128 MB.
  const lines = consumer.stderr.split('\n');
  t.true(
    lines.some((line) => line.includes('applying it again under a higher memory_limit')),
    consumer.stderr.slice(-3000),
  );
  t.true(
    lines.some((line) => line.includes('memory_limit set back after the batch') && line.includes('"memoryLimitMb":128')),
    consumer.stderr.slice(-3000),
  );
  const columns = ['id', 'length(body)', 'md5(body)'];
  t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), 'public.hugecopy', columns), await postgresRows(env.pg, 'hugecopy', columns));
});

test('a login Postgres refuses (an expired password, a wrong one) exits 2 with the advice, without the password, and leaves no slot', async (t) => {
  // A cluster of its own (even with PG_URL given: its pg_hba.conf is changed), whose two roles log in with passwords.
  const own = await startPostgres({ walLevel: 'logical' });
  try {
    await own.query(`
      CREATE ROLE expired_user LOGIN REPLICATION PASSWORD 'expired-secret-1' VALID UNTIL '2001-01-01';
      CREATE ROLE checked_user LOGIN REPLICATION PASSWORD 'right-secret-2';`);
    const checked = ['all', 'replication'].map((database) => `host ${database} expired_user,checked_user 127.0.0.1/32 scram-sha-256\n`).join('');
    await own.control!.prependHba(checked);
    const url = (user: string, password: string) => {
      const parsed = new URL(own.url);
      parsed.username = user;
      parsed.password = password;
      return parsed.toString();
    };
    for (const [name, pgUrl, secret] of [
      ['expired password', url('expired_user', 'expired-secret-1'), 'expired-secret-1'],
      ['wrong password', url('checked_user', 'not-the-secret-3'), 'not-the-secret-3'],
    ]) {
      const pipeline = new TestPipeline(own, env.redis.url, 'login', ['main']);
      for (const args of [pipeline.producerArgs(), ['status', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url, '--pg-url', own.url]]) {
        const run = await runCli(args.map((arg) => (arg === own.url ? pgUrl : arg)));
        t.is(run.code, 2, `${name}, ${args[0]}: ${run.stderr}`);
        t.regex(
          run.stderr,
          args[0] === 'producer'
            ? /Postgres refused the login .*password authentication failed.*VALID UNTIL/s
            : /Redis has no pipeline|Postgres refused the login/,
          `${name}, ${args[0]}`,
        );
        t.false(run.stderr.includes(secret) || run.stdout.includes(secret), `${name}, ${args[0]}: the password is not printed`);
      }
      t.deepEqual(await env.redis.client.keys(`pgr:{${pipeline.pipeline}}*`), [], `${name}: no Redis key`);
    }
    t.is(Number((await own.query('SELECT count(*) AS n FROM pg_replication_slots')).rows[0].n), 0, 'no slot');
  } finally {
    await own.stop();
  }
});

test('text that is not UTF-8 (a SQL_ASCII database stores any bytes): the producer exits 2 naming the table and the fix, which works, and a change already in the WAL is recovered with resync --all', async (t) => {
  const database = `legacy_ascii_${process.pid}`;
  await env.pg.query(`CREATE DATABASE ${database} ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'`);
  const url = new URL(env.pg.url);
  url.pathname = `/${database}`;
  const pool = new pg.Pool({ connectionString: url.toString(), max: 2 });
  pool.on('error', () => {});
  const legacy = { ...env.pg, url: url.toString(), query: (sql: string, params?: unknown[]) => pool.query(sql, params) };
  // What Latin-1 text written by an old application looks like there: é is the byte 0xE9.
  const toUtf8 = "convert_from(convert(convert_to(name, 'SQL_ASCII'), 'LATIN1', 'UTF8'), 'SQL_ASCII')";
  const pipeline = new TestPipeline(legacy, env.redis.url, 'legacyascii', ['main']);
  let producer: CliProcess | undefined;
  let consumer: CliProcess | undefined;
  try {
    await legacy.query(`
      CREATE TABLE customers (id int PRIMARY KEY, name text);
      INSERT INTO customers VALUES (1, 'plain'), (2, E'caf\\xe9');
      CREATE PUBLICATION ${pipeline.publication} FOR TABLE customers;`);
    const copied = await runCli(pipeline.producerArgs());
    t.is(copied.code, 2, copied.stderr);
    t.regex(copied.stderr, /this database's encoding is SQL_ASCII/);
    t.regex(copied.stderr, /Postgres cannot send a value of public\.customers as UTF-8 \(invalid byte sequence for encoding "UTF8": 0xe9\)/);
    t.false(copied.stderr.includes('    at '), 'no stack trace');

    // The advice, followed: the value written in UTF-8, and the copy goes through.
    await legacy.query(`UPDATE customers SET name = ${toUtf8} WHERE id = 2`);
    producer = pipeline.producer();
    consumer = pipeline.duckdb('main');
    await pipeline.waitForCopy(env.redis.client);
    // A change that is not UTF-8 is in the WAL now: Postgres cannot send it, the producer stops with the fix.
    await legacy.query("INSERT INTO customers VALUES (3, E'na\\xefve')");
    t.is(await producer.exited, 2);
    // Ended as expected: stop() marks it so, and the pipeline's waits no longer count it as failed.
    await producer.stop();
    t.regex(
      producer.stderr,
      /Postgres cannot send a value as UTF-8 \(invalid byte sequence for encoding "UTF8": 0xef[ 0-9a-fx]*, in the change at LSN [0-9A-F]+\/[0-9A-F]+\)/,
    );
    t.regex(producer.stderr, /pg-replicate resync --all/);
    await legacy.query(`UPDATE customers SET name = ${toUtf8} WHERE id = 3`);
    const requested = await runCli(['resync', '--all', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url]);
    t.is(requested.code, 0, requested.stderr);
    producer = pipeline.producer();
    await pipeline.waitForCopy(env.redis.client);
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer?.stop(), consumer?.stop(), pool.end()]);
  }
  t.deepEqual(
    await duckdbRows(pipeline.duckdbPath('main'), 'public.customers', ['id', 'name']),
    rowsAsText([
      [1, 'plain'],
      [2, 'café'],
      [3, 'naïve'],
    ]),
  );
});

test("a value Postgres fails on as it decodes or copies it (a publication's row filter dividing by zero): the producer exits 2 with the error, the table or the LSN, and the fix", async (t) => {
  const streamed = new TestPipeline(env.pg, env.redis.url, 'rowfilter', ['main']);
  await env.pg.query(`
    CREATE TABLE measures (id int PRIMARY KEY, divisor int);
    INSERT INTO measures VALUES (1, 1), (2, 2);
    CREATE PUBLICATION ${streamed.publication} FOR TABLE measures WHERE (100 / divisor > 0);`);
  const producer = streamed.producer();
  const consumer = streamed.duckdb('main');
  try {
    await streamed.waitForCopy(env.redis.client);
    await env.pg.query('INSERT INTO measures VALUES (3, 0)');
    t.is(await producer.exited, 2);
    t.regex(
      producer.stderr,
      /Postgres failed on a value it was to send \(division by zero, in the change at LSN [0-9A-F]+\/[0-9A-F]+\)\. This does not pass by itself/,
    );
    t.regex(producer.stderr, /the publication's row filter that fails on it/);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  // The same table copied for a new pipeline: the copy meets the row.
  const copied = new TestPipeline(env.pg, env.redis.url, 'rowfiltercopy', ['main']);
  await env.pg.query(`CREATE PUBLICATION ${copied.publication} FOR TABLE measures WHERE (100 / divisor > 0)`);
  const run = await runCli(copied.producerArgs());
  t.is(run.code, 2, run.stderr);
  t.regex(run.stderr, /Postgres failed on a value of public\.measures it was to send \(division by zero\)/);
  t.false(run.stderr.includes('    at '), 'no stack trace');
});
