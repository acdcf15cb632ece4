import { randomUUID } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { type DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { rowsAsText, tempDir } from './pipeline.js';

/** Starts one emulator for a test file (before its tests) and stops it after them. */
export function useBigQueryEmulator(test: { before: (fn: () => Promise<void>) => void; after: { always: (fn: () => Promise<void>) => void } }): {
  emulator: BigQueryEmulator;
} {
  const holder = {} as { emulator: BigQueryEmulator };
  test.before(async () => {
    holder.emulator = await BigQueryEmulator.start();
  });
  test.after.always(async () => {
    await holder.emulator?.close();
  });
  return holder;
}

/**
 * A local BigQuery for the tests: the REST calls our destination makes through
 * @google-cloud/bigquery (datasets get/insert, jobs insert/get, getQueryResults, multipart
 * load uploads, table delete), answered from an in-memory DuckDB in which each dataset is a
 * schema. Query jobs run the SQL the destination sends, translated from BigQuery's dialect
 * where DuckDB's differs (types, string escapes, backtick names, ASSERT, PARSE_JSON, NOT
 * ENFORCED keys). Jobs run one at a time (or at once, with parallelJobs), each on its own
 * connection (so TEMP tables are per script), and a failing statement rolls its script's
 * transaction back, as BigQuery does.
 *
 * It is deliberately not a general BigQuery: it covers our SQL and answers errors in
 * BigQuery's shapes, and it can be told to fail requests (rate limits, outages, denied access).
 */
export class BigQueryEmulator {
  readonly url: string;
  /** PRIMARY KEY … NOT ENFORCED declarations seen, by "dataset.table". */
  readonly primaryKeys = new Map<string, string[]>();
  /** Expiration times (ms since the epoch) set on tables by load jobs, by "dataset.table". */
  readonly expirations = new Map<string, number>();
  /** Requests answered with an injected fault so far. */
  faultsServed = 0;
  /** Jobs between their arrival and their answer now, and the most there were at once. */
  jobsInFlight = 0;
  mostJobsInFlight = 0;
  private readonly jobs = new Map<string, Record<string, unknown>>();
  private readonly faults: { status: number; reason: string; times: number; match: RegExp }[] = [];
  private queue: Promise<unknown> = Promise.resolve();
  private readonly scratch = tempDir();

  private constructor(
    private readonly server: ReturnType<typeof createServer>,
    private readonly instance: DuckDBInstance,
    /** Each job answers this long after it arrives, the wait not holding the queue of jobs (BigQuery's own round trip and scheduling). */
    private readonly jobDelayMs: number,
    /** Jobs run at once, as BigQuery runs them, rather than one after another (see runJob). */
    private readonly parallelJobs: boolean,
  ) {
    this.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  static async start(options: { jobDelayMs?: number; parallelJobs?: boolean } = {}): Promise<BigQueryEmulator> {
    const instance = await DuckDBInstance.create(':memory:');
    const setup = await instance.connect();
    // BigQuery functions DuckDB lacks or names differently.
    await setup.run(`CREATE MACRO parse_json(text, wide_number_mode := NULL) AS json(text)`);
    await setup.run(`CREATE MACRO to_json_string(value) AS CAST(to_json(value) AS VARCHAR)`);
    // Canonical INTERVAL text "[-]Y-M D [-]H:M:S[.F]", as months, days and microseconds.
    await setup.run(`CREATE MACRO bq_interval_of(p, negative) AS CAST(
      CAST((CASE WHEN negative THEN -1 ELSE 1 END) * (CAST(p.y AS BIGINT) * 12 + CAST(p.m AS BIGINT)) AS VARCHAR) || ' months ' || p.d || ' days ' ||
      CAST((CASE WHEN p.ts = '-' THEN -1 ELSE 1 END) * ((CAST(p.h AS BIGINT) * 60 + CAST(p.mi AS BIGINT)) * 60000000 + CAST(round(CAST(p.s AS DOUBLE) * 1000000) AS BIGINT)) AS VARCHAR) || ' microseconds'
      AS INTERVAL)`);
    await setup.run(`CREATE MACRO bq_interval(text) AS bq_interval_of(
      regexp_extract(text, '^-?(\\d+)-(\\d+) (-?\\d+) (-?)(\\d+):(\\d+):([\\d.]+)$', ['y', 'm', 'd', 'ts', 'h', 'mi', 's']), text LIKE '-%')`);
    setup.closeSync();
    const emulator = await new Promise<BigQueryEmulator>((resolve) => {
      // A client gone mid-request (a consumer killed, or connections closed at the end) is
      // answered by nobody: its request fails with "aborted", which is not the test's failure.
      const server = createServer((request, response) => void emulator.handle(request, response).catch(() => response.destroy()));
      let emulator: BigQueryEmulator;
      server.listen(0, '127.0.0.1', () => {
        emulator = new BigQueryEmulator(server, instance, options.jobDelayMs ?? 0, options.parallelJobs ?? false);
        resolve(emulator);
      });
    });
    return emulator;
  }

  /** The next `times` requests whose "METHOD path" matches fail with this HTTP status and reason. */
  failNext(times: number, status: number, reason: string, match = /./): void {
    this.faults.push({ status, reason, times, match });
  }

  /** Every request for this project fails with 403 accessDenied until cleared, as with a revoked role. */
  denyAccess(project: string, denied: boolean): void {
    this.failAll(project, denied ? { status: 403, reason: 'accessDenied' } : undefined);
  }

  /** Every request for this project fails with 503 backendError until cleared, as in an outage. */
  unavailable(project: string, down: boolean): void {
    this.failAll(project, down ? { status: 503, reason: 'backendError' } : undefined);
  }

  private failAll(project: string, fault: { status: number; reason: string } | undefined): void {
    const match = new RegExp(`/projects/${project}/`);
    const others = this.faults.filter((candidate) => candidate.match.source !== match.source);
    this.faults.splice(0, this.faults.length, ...others, ...(fault ? [{ ...fault, times: Number.MAX_SAFE_INTEGER, match }] : []));
  }

  /** Runs SQL (DuckDB's dialect) against the stored tables, for assertions. */
  async query(sql: string): Promise<unknown[][]> {
    return this.serially(async () => {
      const connection = await this.instance.connect();
      try {
        return (await connection.runAndReadAll(sql)).getRows();
      } finally {
        connection.closeSync();
      }
    });
  }

  /** A table's rows as text, in the form postgresRows gives. */
  async tableRows(dataset: string, table: string, columns: string[]): Promise<string[]> {
    return rowsAsText(await this.query(`SELECT ${columns.map((column) => `CAST("${column}" AS VARCHAR)`).join(', ')} FROM "${dataset}"."${table}"`));
  }

  async close(): Promise<void> {
    await new Promise((resolve) => this.server.close(resolve));
    this.server.closeAllConnections();
    await this.queue;
    this.instance.closeSync();
    rmSync(this.scratch, { recursive: true, force: true });
  }

  /**
   * A job's work: one after another, or with parallelJobs at once, as BigQuery runs them. DuckDB
   * then aborts a transaction that conflicts with another (two scripts writing one table's
   * rows); BigQuery queues such DML instead, so the job runs again until it commits.
   */
  private async inTurn<T>(work: () => Promise<T>): Promise<T> {
    if (!this.parallelJobs) return this.serially(work);
    for (let attempt = 1; ; attempt++) {
      try {
        return await work();
      } catch (error) {
        if (attempt >= 20 || !/conflict/i.test((error as Error).message)) throw error;
        await new Promise((resolve) => setTimeout(resolve, 5 * attempt));
      }
    }
  }

  private serially<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work);
    this.queue = run.catch(() => {});
    return run;
  }

  /** While set, requests are held unanswered (a BigQuery that hangs); hold(false) lets them through. */
  hold(holding: boolean): void {
    if (holding) {
      this.held ??= [];
      return;
    }
    const held = this.held ?? [];
    this.held = undefined;
    for (const release of held) release();
  }

  private held: (() => void)[] | undefined;
  /** Requests held by hold(true) so far. */
  heldRequests = 0;

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const body = await readBody(request);
    if (this.held) {
      this.heldRequests++;
      await new Promise<void>((resolve) => this.held!.push(resolve));
    }
    const url = new URL(request.url ?? '/', this.url);
    const route = `${request.method} ${url.pathname}`;
    const fault = this.faults.find((candidate) => candidate.times > 0 && candidate.match.test(route));
    if (fault) {
      fault.times--;
      this.faultsServed++;
      return reply(response, fault.status, errorBody(fault.status, fault.reason, `injected fault: ${fault.reason}`));
    }
    try {
      let match: RegExpExecArray | null;
      if ((match = /^GET \/bigquery\/v2\/projects\/([^/]+)\/datasets\/([^/]+)$/.exec(route))) {
        const exists = await this.query(`SELECT 1 FROM information_schema.schemata WHERE schema_name = '${match[2]}'`);
        if (exists.length === 0) return reply(response, 404, errorBody(404, 'notFound', `Not found: Dataset ${match[1]}:${match[2]}`));
        return reply(response, 200, {
          kind: 'bigquery#dataset',
          id: `${match[1]}:${match[2]}`,
          datasetReference: { projectId: match[1], datasetId: match[2] },
        });
      }
      if ((match = /^POST \/bigquery\/v2\/projects\/([^/]+)\/datasets$/.exec(route))) {
        const { datasetReference } = JSON.parse(body.toString());
        await this.query(`CREATE SCHEMA IF NOT EXISTS "${datasetReference.datasetId}"`);
        return reply(response, 200, { kind: 'bigquery#dataset', id: `${match[1]}:${datasetReference.datasetId}`, datasetReference });
      }
      if ((match = /^DELETE \/bigquery\/v2\/projects\/[^/]+\/datasets\/([^/]+)\/tables\/([^/]+)$/.exec(route))) {
        await this.query(`DROP TABLE IF EXISTS "${match[1]}"."${match[2]}"`);
        return reply(response, 204, undefined);
      }
      if ((match = /^POST \/bigquery\/v2\/projects\/([^/]+)\/jobs$/.exec(route))) {
        return reply(response, 200, await this.runJob(match[1], JSON.parse(body.toString())));
      }
      if ((match = /^POST \/upload\/bigquery\/v2\/projects\/([^/]+)\/jobs$/.exec(route))) {
        const [metadata, data] = multipartParts(request.headers['content-type'] ?? '', body);
        return reply(response, 200, await this.runJob(match[1], JSON.parse(metadata.toString()), data));
      }
      if ((match = /^GET \/bigquery\/v2\/projects\/[^/]+\/jobs\/([^/]+)$/.exec(route))) {
        const job = this.jobs.get(match[1]);
        return job ? reply(response, 200, job) : reply(response, 404, errorBody(404, 'notFound', `Not found: Job ${match[1]}`));
      }
      if ((match = /^GET \/bigquery\/v2\/projects\/[^/]+\/queries\/([^/]+)$/.exec(route))) {
        const job = this.jobs.get(match[1]);
        if (!job) return reply(response, 404, errorBody(404, 'notFound', `Not found: Job ${match[1]}`));
        const result = (job.result as { schema: unknown; rows: unknown[] }) ?? { schema: { fields: [] }, rows: [] };
        return reply(response, 200, {
          kind: 'bigquery#getQueryResultsResponse',
          jobReference: job.jobReference,
          jobComplete: true,
          schema: result.schema,
          rows: result.rows,
          totalRows: String(result.rows.length),
        });
      }
      return reply(response, 404, errorBody(404, 'notFound', `the emulator does not implement ${route}`));
    } catch (error) {
      return reply(response, 500, errorBody(500, 'internalError', (error as Error).message));
    }
  }

  /** Runs a query or load job to completion and records it; a failure is the job's errorResult. */
  private async runJob(projectId: string, request: Record<string, any>, data?: Buffer): Promise<Record<string, unknown>> {
    const jobId = request.jobReference?.jobId ?? randomUUID();
    const job: Record<string, any> = {
      kind: 'bigquery#job',
      id: `${projectId}:${jobId}`,
      jobReference: { projectId, jobId, location: request.jobReference?.location ?? 'US' },
      configuration: request.configuration,
      status: { state: 'DONE' },
    };
    this.mostJobsInFlight = Math.max(this.mostJobsInFlight, ++this.jobsInFlight);
    try {
      if (this.jobDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.jobDelayMs));
      if (request.configuration.query) job.result = await this.inTurn(() => this.runScript(request.configuration.query.query));
      else if (request.configuration.load) await this.inTurn(() => this.load(request.configuration.load, data ?? Buffer.alloc(0)));
      else throw new Error('the emulator runs query and load jobs only');
    } catch (error) {
      const failure = { reason: 'invalidQuery', message: (error as Error).message };
      job.status = { state: 'DONE', errorResult: failure, errors: [failure] };
    } finally {
      this.jobsInFlight--;
    }
    this.jobs.set(jobId, job);
    return job;
  }

  private async runScript(script: string): Promise<{ schema: unknown; rows: unknown[] }> {
    const connection = await this.instance.connect();
    let inTransaction = false;
    try {
      let last: { schema: unknown; rows: unknown[] } = { schema: { fields: [] }, rows: [] };
      for (const statement of splitStatements(script)) {
        const sql = await this.translate(statement, connection);
        if (sql === undefined) continue;
        if (/^BEGIN\b/i.test(sql)) inTransaction = true;
        if (/^COMMIT\b/i.test(sql)) inTransaction = false;
        const reader = await connection.runAndReadAll(sql);
        const names = reader.columnNames();
        if (names.length > 0 && /^\s*SELECT/i.test(sql)) {
          const types = reader.columnTypes().map((type) => String(type));
          last = {
            schema: { fields: names.map((name, index) => ({ name, type: bigQueryTypeName(types[index]), mode: 'NULLABLE' })) },
            rows: reader.getRows().map((row) => ({ f: row.map((value) => ({ v: value === null ? null : String(value) })) })),
          };
        }
      }
      return last;
    } catch (error) {
      if (inTransaction) await connection.run('ROLLBACK').catch(() => {});
      throw error;
    } finally {
      connection.closeSync();
    }
  }

  /** BigQuery SQL → DuckDB SQL, statement by statement; undefined for a statement with nothing to do. */
  private async translate(statement: string, connection: DuckDBConnection): Promise<string | undefined> {
    let sql = translateTokens(statement).trim();
    const primaryKey = /,\s*PRIMARY KEY \(([^)]*)\) NOT ENFORCED/i.exec(sql);
    if (primaryKey) {
      const table = /TABLE (?:IF NOT EXISTS )?"([^"]+)"\."([^"]+)"/i.exec(sql)!;
      this.primaryKeys.set(
        `${table[1]}.${table[2]}`,
        primaryKey[1].split(',').map((name) => name.trim().replace(/"/g, '')),
      );
      sql = sql.replace(primaryKey[0], '');
    }
    const assertion = /^ASSERT\s+([\s\S]*)\s+AS\s+('(?:[^']|'')*')$/i.exec(sql);
    if (assertion) return `SELECT CASE WHEN ${assertion[1]} THEN 1 ELSE error(${assertion[2]}) END AS assertion`;
    const rename = /^ALTER TABLE ("[^"]+")\.("[^"]+") RENAME COLUMN IF EXISTS "([^"]+)" TO ("[^"]+")$/i.exec(sql);
    if (rename) {
      const columns = await connection.runAndReadAll(
        `SELECT 1 FROM information_schema.columns WHERE table_schema = ${rename[1].replace(/"/g, "'")} AND table_name = ${rename[2].replace(/"/g, "'")} AND column_name = '${rename[3]}'`,
      );
      return columns.getRows().length > 0 ? `ALTER TABLE ${rename[1]}.${rename[2]} RENAME COLUMN "${rename[3]}" TO ${rename[4]}` : undefined;
    }
    return sql;
  }

  /** A load job: JSON lines into a table created from the job's schema if needed. */
  private async load(config: Record<string, any>, data: Buffer): Promise<void> {
    if (config.sourceFormat !== 'NEWLINE_DELIMITED_JSON') throw new Error('the emulator loads NEWLINE_DELIMITED_JSON only');
    const { datasetId, tableId } = config.destinationTable;
    const expiration = config.destinationTableProperties?.expirationTime;
    if (expiration) this.expirations.set(`${datasetId}.${tableId}`, Number(expiration));
    const table = `"${datasetId}"."${tableId}"`;
    const fields = config.schema.fields as { name: string; type: string }[];
    const columns = fields.map((field) => `"${field.name}" ${duckDbTypeName(field.type)}`).join(', ');
    const connection = await this.instance.connect();
    const file = join(this.scratch, `${randomUUID()}.json`);
    try {
      await connection.run(`CREATE TABLE ${config.createDisposition === 'CREATE_NEVER' ? '' : 'IF NOT EXISTS '}${table} (${columns})`);
      if (config.writeDisposition === 'WRITE_TRUNCATE') await connection.run(`DELETE FROM ${table}`);
      if (data.length === 0) return;
      writeFileSync(file, data);
      const types = fields.map((field) => `'${field.name}': '${duckDbTypeName(field.type)}'`).join(', ');
      const names = fields.map((field) => `"${field.name}"`).join(', ');
      await connection.run(`INSERT INTO ${table} (${names}) SELECT ${names} FROM read_json('${file}', format = 'newline_delimited', columns = {${types}})`);
    } finally {
      rmSync(file, { force: true });
      connection.closeSync();
    }
  }
}

const TYPES: Record<string, string> = {
  INT64: 'BIGINT',
  INTEGER: 'BIGINT',
  FLOAT64: 'DOUBLE',
  FLOAT: 'DOUBLE',
  BOOL: 'BOOLEAN',
  BOOLEAN: 'BOOLEAN',
  STRING: 'VARCHAR',
  BYTES: 'BLOB',
  NUMERIC: 'DECIMAL(38, 9)',
  DATETIME: 'TIMESTAMP',
  TIMESTAMP: 'TIMESTAMPTZ',
};

function duckDbTypeName(type: string): string {
  return TYPES[type] ?? type;
}

function bigQueryTypeName(duckDbType: string): string {
  if (/INT/.test(duckDbType)) return 'INTEGER';
  if (duckDbType === 'BOOLEAN') return 'BOOLEAN';
  if (duckDbType === 'DOUBLE' || duckDbType === 'FLOAT') return 'FLOAT';
  return 'STRING';
}

/**
 * Rewrites outside string literals and names: types, functions and literal syntax. BigQuery
 * strings use backslash escapes, DuckDB's doubled quotes; `a.b` names become "a"."b".
 */
function translateTokens(statement: string): string {
  let out = '';
  let position = 0;
  while (position < statement.length) {
    const char = statement[position];
    if (char === "'") {
      let value = '';
      position++;
      while (statement[position] !== "'") {
        if (statement[position] === '\\') {
          const escaped = statement[++position];
          value += escaped === 'n' ? '\n' : escaped === 'r' ? '\r' : escaped === 't' ? '\t' : escaped;
        } else value += statement[position];
        position++;
      }
      position++;
      out += `'${value.replace(/'/g, "''")}'`;
    } else if (char === '`') {
      const end = statement.indexOf('`', position + 1);
      out += statement
        .slice(position + 1, end)
        .split('.')
        .map((part) => `"${part}"`)
        .join('.');
      position = end + 1;
    } else {
      let end = position;
      while (end < statement.length && statement[end] !== "'" && statement[end] !== '`') end++;
      out += translateCode(statement.slice(position, end));
      position = end;
    }
  }
  return out;
}

function translateCode(code: string): string {
  return code
    .replace(/\bBIGNUMERIC\((\d+),\s*(\d+)\)/g, (_, precision, scale) => (Number(precision) <= 38 ? `DECIMAL(${precision}, ${scale})` : 'VARCHAR'))
    .replace(/\bNUMERIC\((\d+),\s*(\d+)\)/g, 'DECIMAL($1, $2)')
    .replace(/\bCURRENT_TIMESTAMP\(\)/g, 'current_timestamp')
    .replace(/\bCAST\(([^()]+) AS INTERVAL\)/g, 'bq_interval($1)')
    .replace(/\b(INT64|FLOAT64|BOOL|STRING|BYTES|NUMERIC|DATETIME|TIMESTAMP)\b/g, (type) => TYPES[type]);
}

/** Splits a script at semicolons outside strings and names. */
function splitStatements(script: string): string[] {
  const statements: string[] = [];
  let current = '';
  let quote: string | undefined;
  for (let position = 0; position < script.length; position++) {
    const char = script[position];
    current += char;
    if (quote) {
      if (char === '\\' && quote === "'") current += script[++position];
      else if (char === quote) quote = undefined;
    } else if (char === "'" || char === '`') quote = char;
    else if (char === ';') {
      statements.push(current.slice(0, -1));
      current = '';
    }
  }
  if (current.trim()) statements.push(current);
  return statements.filter((statement) => statement.trim());
}

function multipartParts(contentType: string, body: Buffer): Buffer[] {
  const boundary = /boundary="?([^";]+)"?/.exec(contentType)?.[1];
  if (!boundary) throw new Error('multipart upload without a boundary');
  const parts: Buffer[] = [];
  const delimiter = Buffer.from(`--${boundary}`);
  let start = body.indexOf(delimiter);
  while (start >= 0) {
    const next = body.indexOf(delimiter, start + delimiter.length);
    if (next < 0) break;
    const part = body.subarray(start + delimiter.length, next);
    const headersEnd = part.indexOf('\r\n\r\n');
    parts.push(part.subarray(headersEnd + 4, part.length - 2));
    start = next;
  }
  return parts;
}

function readBody(request: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => resolve(Buffer.concat(chunks)));
    request.on('error', reject);
  });
}

function errorBody(code: number, reason: string, message: string) {
  return { error: { code, message, errors: [{ reason, message, domain: 'global' }], status: reason } };
}

function reply(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(body === undefined ? '' : JSON.stringify(body));
}
