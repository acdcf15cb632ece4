import { Option } from 'commander';
import { z } from 'zod';
import { url } from '../../shared/config.js';
import type { DestinationPlugin } from '../plugin.js';

const options = z.object({
  project: z
    .string({ error: '--project (BIGQUERY_PROJECT) is required: the Google Cloud project id' })
    .regex(/^[a-z0-9.:-]{1,100}$/, '--project must be a Google Cloud project id, e.g. my-project-123'),
  dataset: z
    .string({ error: '--dataset (BIGQUERY_DATASET) is required: the dataset to write the tables to' })
    .regex(/^[A-Za-z0-9_]{1,1024}$/, '--dataset may use only letters, digits and _'),
  keyFile: z.string().optional(),
  location: z.string().optional(),
  apiEndpoint: url('--api-endpoint (BIGQUERY_API_ENDPOINT)', ['http:', 'https:']).optional(),
});

export const plugin: DestinationPlugin<typeof options> = {
  type: 'bigquery',
  description: 'Mirror the tables into a BigQuery dataset (exactly once; several processes may share the work).',
  options,
  flags: () => [
    new Option('--project <id>', 'Google Cloud project that runs the jobs and holds the dataset (required)').env('BIGQUERY_PROJECT'),
    new Option('--dataset <name>', 'dataset for the tables, created if missing (required)').env('BIGQUERY_DATASET'),
    new Option('--key-file <file>', 'service account JSON key (default: Application Default Credentials, e.g. GOOGLE_APPLICATION_CREDENTIALS)'),
    new Option('--location <location>', 'dataset location, e.g. US or europe-west1').env('BIGQUERY_LOCATION'),
    new Option('--api-endpoint <url>', 'another BigQuery endpoint, e.g. an emulator (unauthenticated unless credentials are given)').env(
      'BIGQUERY_API_ENDPOINT',
    ),
  ],
  open: async (options) => (await import('./destination.js')).BigQueryDestination.open(options),
};
