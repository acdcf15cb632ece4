import { InvalidArgumentError, Option } from 'commander';
import { z } from 'zod';
import type { DestinationPlugin } from '../plugin.js';

const PATH_REQUIRED = '--path (DUCKDB_PATH) is required: the DuckDB file to write, e.g. --path analytics.duckdb';

/** `--setting name=value`, collected into one object over repeats. */
function setting(text: string, settings: Record<string, string>): Record<string, string> {
  const match = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(text);
  if (!match) throw new InvalidArgumentError(`expected name=value, e.g. memory_limit=4GB (got "${text}")`);
  return { ...settings, [match[1]]: match[2] };
}

const options = z.object({
  path: z.string({ error: PATH_REQUIRED }).min(1, PATH_REQUIRED),
  /** DuckDB settings for the database (memory_limit, threads, …). */
  settings: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()]).transform(String)).optional(),
});

export const plugin: DestinationPlugin<typeof options> = {
  type: 'duckdb',
  description: 'Mirror the tables into a DuckDB file (or MotherDuck with --path md:DB).',
  options,
  flags: () => [
    new Option('--path <file>', 'DuckDB database file, or md:DB for MotherDuck with motherduck_token set (required)').env('DUCKDB_PATH'),
    new Option('--setting <name=value>', 'a DuckDB setting for the database, e.g. memory_limit=4GB (repeatable)').argParser(setting).default({}),
  ],
  fromFlags: (flags) => ({ path: flags.path, settings: flags.setting }),
  open: async ({ path, settings }) => (await import('./destination.js')).DuckDbDestination.open(path, settings),
};
