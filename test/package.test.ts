import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import test from 'ava';
import { CliProcess, duckdbRows, names, postgresRows, tempDir, waitFor } from './support/pipeline.js';
import { useServices } from './support/services.js';

/**
 * The package as users get it: packed (`npm pack`), installed into a project of its own, the
 * examples type-checked against its published types and run end to end. Only the public API
 * (`pg-replicate`, `pg-replicate/duckdb`) is reachable from there.
 */
const env = useServices(test);
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const run = promisify(execFile);
const devVersion = (name: string) => JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).devDependencies[name];

test('the packed package installs elsewhere; its examples type-check against its types and replicate exactly once, through a restart', async (t) => {
  const project = tempDir();
  // dist is built (npm test builds first): packing without scripts leaves it as it is.
  await run('npm', ['pack', '--ignore-scripts', '--pack-destination', project], { cwd: ROOT });
  const tarball = readdirSync(project).find((file) => file.endsWith('.tgz'))!;
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
  await run(
    'npm',
    [
      'install',
      '--no-audit',
      '--no-fund',
      '--prefer-offline',
      `./${tarball}`,
      `typescript@${devVersion('typescript')}`,
      `@types/node@${devVersion('@types/node')}`,
    ],
    { cwd: project, timeout: 300_000 },
  );
  mkdirSync(join(project, 'src'));
  for (const file of ['jsonl-destination.ts', 'pipeline.ts']) copyFileSync(join(ROOT, 'examples', file), join(project, 'src', file));
  writeFileSync(
    join(project, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, rootDir: 'src', outDir: 'build', types: ['node'] },
      include: ['src'],
    }),
  );
  await t.notThrowsAsync(run(join(project, 'node_modules', '.bin', 'tsc'), ['-p', '.'], { cwd: project }), 'the examples type-check');
  const imports = readFileSync(join(project, 'src', 'jsonl-destination.ts'), 'utf8') + readFileSync(join(project, 'src', 'pipeline.ts'), 'utf8');
  t.deepEqual([...new Set([...imports.matchAll(/from '(pg-replicate[^']*)'/g)].map((match) => match[1]))].sort(), ['pg-replicate', 'pg-replicate/duckdb']);

  const { publication } = names('example');
  await env.pg.query(`
    CREATE TABLE example_items (id int PRIMARY KEY, label text, tags text[]);
    INSERT INTO example_items SELECT g, 'item ' || g, ARRAY['a', 'b'] FROM generate_series(1, 500) g;
    CREATE PUBLICATION ${publication} FOR TABLE example_items;`);
  const out = tempDir();
  const start = () =>
    new CliProcess([], { PG_URL: env.pg.url, REDIS_URL: env.redis.url, PUBLICATION: publication, OUT_DIR: out }, [], join(project, 'build', 'pipeline.js'));
  const file = join(out, 'changes.jsonl');
  const read = () =>
    existsSync(file)
      ? readFileSync(file, 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((line) => JSON.parse(line))
      : [];
  let pipeline = start();
  const lines = () => {
    if (pipeline.child.exitCode !== null) throw new Error(`the example ended: ${pipeline.stderr.slice(-2000)}`);
    return read();
  };
  try {
    await waitFor('the copy to reach the JSON-lines file', async () => lines().length >= 500);
    await env.pg.query("UPDATE example_items SET label = 'changed' WHERE id <= 10; DELETE FROM example_items WHERE id > 490");
    await waitFor('the changes to reach the file', async () => lines().length >= 520);
    await pipeline.stop();
    pipeline = start();
    await env.pg.query("INSERT INTO example_items VALUES (1000, 'after the restart', '{}')");
    await waitFor('the insert after the restart to reach the file', async () => lines().some((line) => line.row?.id === '1000'));
    await sleep(1000);
  } finally {
    await pipeline.stop();
  }
  t.is(pipeline.child.exitCode, 0, pipeline.stderr.slice(-2000));
  const written = read();
  t.is(written.filter((line) => line.op === 'copy').length, 500, 'each row copied once');
  t.deepEqual(
    written.filter((line) => line.op !== 'copy').map((line) => `${line.op} ${line.row.id}`),
    [...Array.from({ length: 10 }, (_, i) => `update ${i + 1}`), ...Array.from({ length: 10 }, (_, i) => `delete ${491 + i}`), 'insert 1000'],
    'each change once, in order, through the restart',
  );
  const columns = ['id', 'label'];
  t.deepEqual(await duckdbRows(join(out, 'analytics.duckdb'), 'public.example_items', columns), await postgresRows(env.pg, 'example_items', columns));
});
