/** What every scenario of the bench shares: the services, where a consumer writes, and what a run reports. */
import pg from 'pg';
import { TestPipeline } from '../support/pipeline.js';
import type { PostgresServer, RedisServer } from '../support/services.js';
import type { CpuSeconds } from './measure.js';

export const size = (name: string, fallback: number) => Number(process.env[name] ?? fallback);

/** Where a scenario's consumer writes: DuckDB, or a second database of the same server. */
export type Sink = 'duckdb' | 'postgres';

export interface Result {
  name: string;
  count: number;
  /** The run: a backfill from the producer's launch to its exit; CDC from the producer's start to the slot at the end of the WAL. */
  seconds: number;
  rawSeconds: number;
  rawName: string;
  producerPeakMb: number;
  consumerPeakMb: number;
  /** Redis' used memory at its highest during the run, and the bound the producer's settings put on it. */
  redisPeakMb: number;
  redisBoundMb: number;
  cpu: CpuSeconds;
  /** Backfill: the table's size per row as Postgres' text COPY writes it. */
  bytesPerRow?: number;
  /** Backfill: from the first COPY to the last chunk committed (the copy without start-up). */
  copySeconds?: number;
  /** Backfill: the manual path (COPY csv to a file, DuckDB read_csv) in the same round. */
  manualSeconds?: number;
  /** Backfill: each round's ratio to raw COPY and to the manual path, in the order run (the median round is the result). */
  roundRatios?: number[];
  manualRatios?: number[];
  /** Backfill: the DuckDB destination alone applying the same rows as COPY text chunks, nothing else running. */
  duckdbAloneSeconds?: number;
}

export class Bench {
  private scenario = 0;
  readonly results: Result[] = [];

  constructor(
    readonly pg: PostgresServer,
    readonly redis: RedisServer,
    /** A second database of the same server, for the Postgres destination. */
    readonly targetUrl: string,
  ) {}

  static async start(startPostgres: () => Promise<PostgresServer>, startRedis: () => Promise<RedisServer>): Promise<Bench> {
    const server = await startPostgres();
    const redis = await startRedis();
    await server.query('CREATE DATABASE bench_target');
    const url = new URL(server.url);
    url.pathname = '/bench_target';
    return new Bench(server, redis, url.toString());
  }

  /** A new pipeline of its own name. */
  pipeline(prefix: string): TestPipeline {
    return new TestPipeline(this.pg, this.redis.url, `${prefix}${++this.scenario}`, ['bench']);
  }

  /** A table name not used before in this run. */
  table(prefix: string): string {
    return `${prefix}_${++this.scenario}`;
  }

  consumer(pipeline: TestPipeline, sink: Sink, env: Record<string, string> = {}) {
    return sink === 'duckdb' ? pipeline.duckdb('bench', env) : pipeline.postgres('bench', this.targetUrl);
  }

  /** Empties the target database between runs into it. */
  async resetTarget(): Promise<void> {
    const target = new pg.Client({ connectionString: this.targetUrl });
    await target.connect();
    await target.query('DROP SCHEMA IF EXISTS public CASCADE; DROP SCHEMA IF EXISTS _pg_replicate CASCADE; CREATE SCHEMA public');
    await target.end();
  }

  async stop(): Promise<void> {
    await Promise.all([this.pg.stop(), this.redis.stop()]);
  }
}
