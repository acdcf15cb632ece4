import type { Redis } from 'ioredis';
import { BigQueryDestination } from './bigquery/destination.js';
import type { BigQueryOptions } from './bigquery/warehouse.js';
import type { Destination } from './destination.js';
import { DuckDbDestination } from './duckdb/destination.js';
import { StdoutDestination } from './stdout/destination.js';

/** Every destination type, by the name the CLI and the run config use. */
export type DestinationConfig = { type: 'duckdb'; path: string } | { type: 'stdout' } | ({ type: 'bigquery' } & BigQueryOptions);

export async function openDestination(config: DestinationConfig, context: { redis: Redis; pipeline: string; name: string }): Promise<Destination> {
  switch (config.type) {
    case 'duckdb':
      return DuckDbDestination.open(config.path);
    case 'stdout':
      return new StdoutDestination(context.redis, context.pipeline, context.name);
    case 'bigquery':
      return BigQueryDestination.open(config);
  }
}
