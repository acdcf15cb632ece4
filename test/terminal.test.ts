import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { CLI, TestPipeline, waitFor } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

const quoted = (arg: string) => `'${arg.replace(/'/g, `'\\''`)}'`;

/** Runs the CLI on a pseudo-terminal (script(1)), collecting what it draws; Ctrl-C stops it. */
function onTerminal(args: string[]) {
  // A terminal wide enough for a whole bar line (script's own is 80 columns).
  const command = `stty cols 200 rows 50; exec ${[process.execPath, CLI, ...args].map(quoted).join(' ')}`;
  const terminal = spawn('script', ['-qfec', command, '/dev/null'], { env: { ...process.env, LOG_LEVEL: 'info' }, stdio: 'pipe' });
  let screen = '';
  terminal.stdout.on('data', (data: Buffer) => {
    screen += data.toString();
  });
  const exited = new Promise<number | null>((resolve) => terminal.on('exit', resolve));
  return {
    screen: () => screen,
    exited,
    interrupt: () => terminal.stdin.write('\x03'),
  };
}

/**
 * Waits for the view's line about the stream, writes `change`, waits for the line to count
 * `count` changes read with `destination` applied, then stops the process with Ctrl-C.
 */
async function streamThenStop(t: ExecutionContext, view: ReturnType<typeof onTerminal>, change: string, count: number, destination: string): Promise<void> {
  try {
    await waitFor('the line about the stream', async () => view.screen().includes('streaming:'));
    await env.pg.query(change);
    const counted = new RegExp(`streaming: [\\d,]+ changes/s read, ${count} since the producer started; ${destination} applied up to`);
    await waitFor('the stream line to count the changes', async () => counted.test(view.screen()));
    view.interrupt();
    t.is(await view.exited, 0, view.screen());
  } finally {
    view.interrupt();
  }
}

test('on a terminal the producer draws a bar per copied table up to every row applied, then a line about the stream, logs above them; off a terminal only log lines', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'tty', ['main']);
  await env.pg.query(`
    CREATE TABLE tty_big (id int PRIMARY KEY, body text);
    INSERT INTO tty_big SELECT g, md5(g::text) FROM generate_series(1, 60000) g;
    CREATE TABLE tty_small (id int PRIMARY KEY);
    INSERT INTO tty_small SELECT generate_series(1, 700);
    ANALYZE tty_big, tty_small;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE tty_big, tty_small;`);
  const consumer = pipeline.duckdb('main');
  const producer = onTerminal(pipeline.producerArgs(['--copy-chunk-rows', '5000']));
  try {
    await streamThenStop(t, producer, 'INSERT INTO tty_small SELECT generate_series(701, 900)', 200, 'main');
  } finally {
    await consumer.stop();
  }
  const screen = producer.screen();
  // Bars by Postgres' estimate; the last drawing of each shows its table whole.
  t.regex(screen, /100% \| public\.tty_big \| 60,000\/60,000 rows \| [\d,]+ rows\/s \| ETA/);
  t.regex(screen, /100% \| public\.tty_small \| 700\/700 rows/);
  t.regex(screen, /\d+% \| public\.tty_big \| [\d,]+\/60,000 rows/);
  // The thread's logs are readable lines on the terminal, not JSON.
  t.regex(screen, /INFO.*copying tables/);
  t.false(screen.includes('{"level"'));

  // Off a terminal: JSON log lines, and nothing drawn.
  const again = new TestPipeline(env.pg, env.redis.url, 'notty', ['main']);
  await env.pg.query(`CREATE PUBLICATION ${again.publication} FOR TABLE tty_big`);
  const plain = again.duckdb('main');
  // A heap other than the default: the thread started before parsing is replaced by one with it.
  const copied = again.producer(['--mode', 'copy', '--heap-mb=64']);
  t.is(await copied.exited, 0, copied.stderr);
  await plain.stop();
  t.true(
    copied.stderr
      .trim()
      .split('\n')
      .every((line) => line.startsWith('{')),
    copied.stderr,
  );
  t.false(copied.stderr.includes('rows/s'));
});

test("run --config on a terminal draws the same view, its consumers' log lines above it", async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'ttyrun', []);
  await env.pg.query(`
    CREATE TABLE tty_run (id int PRIMARY KEY, body text);
    INSERT INTO tty_run SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
    ANALYZE tty_run;
    CREATE PUBLICATION ${pipeline.publication} FOR TABLE tty_run;`);
  const config = join(pipeline.dir, 'pipeline.yaml');
  writeFileSync(
    config,
    `pipeline: ${pipeline.pipeline}
pgUrl: ${env.pg.url}
redisUrl: ${env.redis.url}
publication: ${pipeline.publication}
slot: ${pipeline.slot}
destinations:
  - { type: duckdb, name: warehouse, path: ${join(pipeline.dir, 'run.duckdb')} }
`,
  );
  const run = onTerminal(['run', '--config', config]);
  await streamThenStop(t, run, "INSERT INTO tty_run VALUES (0, 'zero')", 1, 'warehouse');
  const screen = run.screen();
  t.regex(screen, /100% \| public\.tty_run \| 3,000\/3,000 rows/);
  t.regex(screen, /INFO.*consumer running/);
  t.false(screen.includes('{"level"'));
});
