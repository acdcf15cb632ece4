import type { Redis } from 'ioredis';
import type { BigQueryOptions } from './bigquery/warehouse.js';
import type { Destination } from './destination.js';

/** Every destination type, by the name the CLI and the run config use. */
export type DestinationConfig =
  | { type: 'duckdb'; path: string; settings?: Record<string, string> }
  | { type: 'stdout' }
  | ({ type: 'bigquery' } & BigQueryOptions);

/**
 * Opens a destination. Each is loaded only when used: a producer or a stdout consumer never
 * pays for DuckDB's native library or the BigQuery client (tens of MB of memory each).
 */
export async function openDestination(config: DestinationConfig, context: { redis: Redis; pipeline: string; name: string }): Promise<Destination> {
  switch (config.type) {
    case 'duckdb':
      return (await import('./duckdb/destination.js')).DuckDbDestination.open(config.path, config.settings);
    case 'stdout':
      return new (await import('./stdout/destination.js')).StdoutDestination(context.redis, context.pipeline, context.name);
    case 'bigquery':
      return (await import('./bigquery/destination.js')).BigQueryDestination.open(config);
  }
}
