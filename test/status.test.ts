import test from 'ava';
import { CliProcess, LOAD_SCHEMA, TestPipeline, waitFor, writeLoad } from './support/pipeline.js';
import { useServices } from './support/services.js';

const env = useServices(test);

test('status --watch shows the pipeline again every second, following it, until stopped', async (t) => {
  const pipeline = new TestPipeline(env.pg, env.redis.url, 'watch', ['main']);
  await env.pg.query(LOAD_SCHEMA(pipeline.publication, 'watch'));
  await pipeline.runWithDuckdb(env.redis.client, async () => {
    const watch = new CliProcess(['status', '--watch', '--pipeline', pipeline.pipeline, '--redis-url', env.redis.url]);
    const shown = () => watch.stdout.split(`pipeline ${pipeline.pipeline}:`).length - 1;
    await waitFor('two renderings', async () => shown() >= 2);
    const applied = () => [...watch.stdout.matchAll(/destination main: ok, applied up to (\S+)/g)].map((match) => match[1]);
    const before = applied().at(-1);
    await writeLoad(env.pg, 5, 0, 'watch');
    await pipeline.waitForCatchUp();
    await waitFor('a rendering with the new position', async () => applied().at(-1) !== before);
    const stopped = Date.now();
    await watch.stop();
    t.is(watch.child.exitCode, 0, watch.stderr);
    t.true(Date.now() - stopped < 5_000, 'it stops at once');
    t.true(shown() >= 3);
  });
});
