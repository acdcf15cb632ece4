/**
 * A whole pipeline in one process: the producer, a DuckDB destination and the JSON-lines one of
 * jsonl-destination.ts. Run with PG_URL, REDIS_URL, PUBLICATION and OUT_DIR set; stop with Ctrl-C
 * (start it again: it continues where it stopped).
 */
import { join } from 'node:path';
import { runConsumer, runProducer } from 'pg-replicate';
import { DuckDbDestination } from 'pg-replicate/duckdb';
import { JsonLinesDestination } from './jsonl-destination.js';

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name}`);
  return value;
}

const stop = new AbortController();
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => stop.abort());
// One part failing (say, a publication that does not exist) stops the others.
const stopOnError = (running: Promise<void>) =>
  running.catch((error) => {
    stop.abort();
    throw error;
  });

const common = { redisUrl: env('REDIS_URL'), pipeline: 'example' };
const out = env('OUT_DIR');
await Promise.all([
  stopOnError(
    runProducer({ ...common, pgUrl: env('PG_URL'), publication: env('PUBLICATION'), slot: 'example_slot', destinations: ['analytics', 'files'] }, stop.signal),
  ),
  stopOnError(runConsumer({ ...common, name: 'analytics', destination: await DuckDbDestination.open(join(out, 'analytics.duckdb')) }, stop.signal)),
  stopOnError(runConsumer({ ...common, name: 'files', destination: new JsonLinesDestination(join(out, 'changes.jsonl')) }, stop.signal)),
]);
