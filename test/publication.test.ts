import test from 'ava';
import { type CliProcess, duckdbRows, postgresRows, TestPipeline, waitFor } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

const COLUMNS = ['id', 'note'];

/**
 * Postgres sends nothing of a table while it is out of the publication. A table dropped from it
 * and added again — within the same second, or while the producer was stopped — is copied
 * afresh, as its destinations missed what happened in between.
 */
test('a table dropped from the publication and added again is copied afresh: at once, and across a producer restart', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'readded', ['main']);
  await env.pg.query(`
    CREATE TABLE readded (id int PRIMARY KEY, note text);
    CREATE TABLE steady (id int PRIMARY KEY, note text);
    INSERT INTO readded SELECT g, 'copied' FROM generate_series(1, 200) g;
    INSERT INTO steady SELECT g, 'copied' FROM generate_series(1, 200) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE readded, steady;`);
  const outAndBack = async (round: number) => {
    await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} DROP TABLE readded`);
    await env.pg.query(`
      UPDATE readded SET note = 'while out ${round}' WHERE id % 3 = ${round};
      DELETE FROM readded WHERE id % 17 = ${round};
      INSERT INTO readded VALUES (${1000 + round}, 'while out');
      UPDATE steady SET note = 'round ${round}' WHERE id % 5 = 0;`);
    await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} ADD TABLE readded`);
    await env.pg.query(`UPDATE readded SET note = 'back ${round}' WHERE id = 2`);
  };
  const equal = async () => {
    for (const table of ['readded', 'steady']) {
      t.deepEqual(await duckdbRows(pipeline.duckdbPath('main'), `public.${table}`, COLUMNS), await postgresRows(env.pg, table, COLUMNS), table);
    }
  };
  // The copy afresh is in the table's queue ahead of the change made after it: once the slot passes that change, both are applied.
  const copiedAfresh = async (producer: CliProcess, round: number) => {
    await waitFor('the table to be copied afresh', async () => {
      pipeline.assertRunning();
      return /dropped from the publication and added again[^\n]*\n(.*\n)*.*table sync: copy enqueued/.test(producer.stderr);
    });
    await env.pg.query(`UPDATE readded SET note = 'after ${round}' WHERE id = 4`);
    await pipeline.waitForCatchUp();
  };
  let producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    await outAndBack(1);
    await copiedAfresh(producer, 1);
    await producer.stop();
    await outAndBack(2);
    producer = pipeline.producer();
    await copiedAfresh(producer, 2);
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  await equal();
});

/** A table that leaves the publication is kept at the destinations as it was: the operator is told which, and what to do. */
test('a table that leaves the publication is named in a warning (kept at the destinations as it was); a dropped one is said', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'departs', ['main']);
  await env.pg.query(`
    CREATE TABLE departing (id int PRIMARY KEY, note text);
    CREATE TABLE doomed (id int PRIMARY KEY, note text);
    CREATE TABLE staying (id int PRIMARY KEY, note text);
    INSERT INTO departing SELECT g, 'copied' FROM generate_series(1, 50) g;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE departing, doomed, staying;`);
  const producer = pipeline.producer();
  const consumer = pipeline.duckdb('main');
  try {
    await pipeline.waitForCopy(env.redis.client);
    const doomed = Number((await env.pg.query(`SELECT 'doomed'::regclass::oid AS oid`)).rows[0].oid);
    await env.pg.query(`ALTER PUBLICATION ${pipeline.publication} DROP TABLE departing; DROP TABLE doomed`);
    await env.pg.query(`UPDATE departing SET note = 'after it left'; INSERT INTO staying VALUES (1, 'still here')`);
    const said = (message: string) => producer.stderr.split('\n').find((line) => line.includes(message));
    const left = JSON.parse(await waitFor('the departure to be said', async () => said('tables left publication')));
    t.deepEqual(left.tables, ['departing']);
    t.regex(left.msg, /add them back to the publication/);
    t.deepEqual(JSON.parse(said('tables dropped in Postgres')!).tableOids, [doomed]);
    await pipeline.waitForCatchUp();
  } finally {
    await Promise.all([producer.stop(), consumer.stop()]);
  }
  // The destination keeps the departed table as it was when it left.
  t.deepEqual(
    await duckdbRows(pipeline.duckdbPath('main'), 'public.departing', COLUMNS),
    Array.from({ length: 50 }, (_, i) => JSON.stringify([String(i + 1), 'copied'])).sort(),
  );
});
