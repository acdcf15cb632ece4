import { Option } from 'commander';
import { z } from 'zod';
import { url } from '../../shared/config.js';
import type { DestinationPlugin } from '../plugin.js';

const options = z.object({
  url: url('--url (TARGET_PG_URL)', ['postgres:', 'postgresql:']),
  schemaPrefix: z
    .string()
    .regex(/^[A-Za-z0-9_]{0,32}$/, '--schema-prefix may use only letters, digits and _ (at most 32)')
    .optional(),
});

export const plugin: DestinationPlugin<typeof options> = {
  type: 'postgres',
  description: 'Mirror the tables into another Postgres database, with the same column types (exactly once).',
  options,
  flags: () => [
    new Option('--url <url>', 'the target database: postgres://user:password@host:port/database (required)').env('TARGET_PG_URL'),
    new Option('--schema-prefix <prefix>', 'put before each source schema name at the target (public → <prefix>public)').env('TARGET_SCHEMA_PREFIX'),
  ],
  open: async (options) => (await import('./destination.js')).PostgresDestination.open(options),
};
