import { existsSync } from 'node:fs';
import { BigQuery, type TableField } from '@google-cloud/bigquery';
import { PassThroughClient } from 'google-auth-library';
import { errorMessage, UserError } from '../../shared/errors.js';
import { log } from '../../shared/log.js';
import { PermanentError, RefusedError } from '../destination.js';

export interface BigQueryOptions {
  project: string;
  dataset: string;
  /** Service account key; without it, Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud, metadata server). */
  keyFile?: string;
  location?: string;
  /** Another endpoint (e.g. an emulator); given without credentials, requests go unauthenticated. */
  apiEndpoint?: string;
}

/** Largest staging upload in one load job: small enough for a multipart upload, retried whole. */
const MAX_UPLOAD_BYTES = 4 * 1024 * 1024;
/** Staging tables left by a crash expire by themselves. */
const STAGING_TTL_MS = 24 * 60 * 60 * 1000;

/** Reasons BigQuery gives for failures that retrying cannot fix. */
const PERMANENT_REASONS = new Set([
  'accessDenied',
  'billingNotEnabled',
  'invalid',
  'invalidQuery',
  'notFound',
  'duplicate',
  'responseTooLarge',
  'resourcesExceeded',
]);

/**
 * The few BigQuery calls the destination makes, through @google-cloud/bigquery: run a SQL
 * script as a query job and read its rows, and load JSON lines into a staging table. Failures
 * come out as PermanentError (with what to fix) or as plain errors the runner retries with
 * backoff; the client library itself already retries 429 and 5xx responses with jittered backoff.
 */
export class Warehouse {
  readonly client: BigQuery;

  constructor(readonly options: BigQueryOptions) {
    if (options.keyFile && !existsSync(options.keyFile))
      throw new UserError(`--key-file ${options.keyFile} does not exist: give the path of a service account JSON key`);
    const anonymous = options.apiEndpoint !== undefined && !options.keyFile && !process.env.GOOGLE_APPLICATION_CREDENTIALS;
    this.client = new BigQuery({
      projectId: options.project,
      location: options.location,
      keyFilename: options.keyFile,
      apiEndpoint: options.apiEndpoint,
      authClient: anonymous ? new PassThroughClient() : undefined,
      autoRetry: true,
      maxRetries: 5,
    });
  }

  /** Creates the dataset unless it exists. */
  async ensureDataset(): Promise<void> {
    await this.call('open the dataset', async () => {
      const dataset = this.client.dataset(this.options.dataset, { location: this.options.location });
      const [exists] = await dataset.exists();
      if (!exists)
        await dataset.create({ location: this.options.location }).catch((error) => {
          if ((error as { code?: number }).code !== 409) throw error; // created meanwhile by another consumer
        });
    });
  }

  /** Runs a query or script in the dataset and returns its (last statement's) rows. */
  async query(sql: string): Promise<Record<string, unknown>[]> {
    log.debug({ sql }, 'BigQuery query');
    return this.call('run a query', async () => {
      const [job] = await this.client.createQueryJob({
        query: sql,
        location: this.options.location,
        useLegacySql: false,
        defaultDataset: { projectId: this.options.project, datasetId: this.options.dataset },
      });
      const [rows] = await job.getQueryResults();
      return rows;
    });
  }

  /** Loads JSON lines into a fresh staging table with this schema (in uploads of bounded size). */
  async loadStaging(table: string, fields: TableField[], lines: string[]): Promise<void> {
    let first = true;
    for (const upload of uploads(lines)) {
      await this.call('load a staging table', async () => {
        const stream = this.client
          .dataset(this.options.dataset)
          .table(table)
          .createWriteStream({
            sourceFormat: 'NEWLINE_DELIMITED_JSON',
            schema: { fields },
            createDisposition: 'CREATE_IF_NEEDED',
            writeDisposition: first ? 'WRITE_TRUNCATE' : 'WRITE_APPEND',
            destinationTableProperties: { expirationTime: String(Date.now() + STAGING_TTL_MS) },
          } as never);
        const job = await new Promise<{ promise(): Promise<unknown> }>((resolve, reject) => {
          stream.on('job', resolve).on('error', reject);
          stream.end(upload);
        });
        await job.promise();
      });
      first = false;
    }
  }

  async dropTable(table: string): Promise<void> {
    await this.client
      .dataset(this.options.dataset)
      .table(table)
      .delete({ ignoreNotFound: true } as never)
      .catch(() => {});
  }

  private async call<T>(what: string, body: () => Promise<T>): Promise<T> {
    try {
      return await body();
    } catch (error) {
      throw classify(error, `BigQuery: cannot ${what} in ${this.options.project}.${this.options.dataset}`);
    }
  }
}

function* uploads(lines: string[]): Generator<string> {
  let upload: string[] = [];
  let bytes = 0;
  for (const line of lines) {
    if (bytes > 0 && bytes + line.length > MAX_UPLOAD_BYTES) {
      yield upload.join('\n');
      upload = [];
      bytes = 0;
    }
    upload.push(line);
    bytes += line.length + 1;
  }
  yield upload.join('\n');
}

/** Turns a client error into a message that says what to do, permanent or to be retried. */
function classify(error: unknown, context: string): Error {
  const { code, errors } = error as { code?: number; errors?: { reason?: string; message?: string }[] };
  const reasons = (errors ?? []).map((inner) => inner.reason).filter((reason): reason is string => !!reason);
  const message = `${context}: ${errorMessage(error)}`;
  // A transaction that lost a race with a concurrent one (or our own stale-state check) is simply retried.
  if (/concurrent update|could not serialize|pg-replicate: stale/i.test(message)) return new Error(message);
  if (code === 401 || /credentials/i.test(message)) {
    return new PermanentError(`${message}. Check the credentials: --key-file or GOOGLE_APPLICATION_CREDENTIALS must name a valid service account key.`);
  }
  if (code === 403 || reasons.includes('accessDenied')) {
    return new PermanentError(`${message}. The service account needs roles/bigquery.dataEditor on the dataset and roles/bigquery.jobUser on the project.`);
  }
  if (code === 429 || (code !== undefined && code >= 500) || reasons.some((reason) => /rateLimit|backendError|internalError/.test(reason)))
    return new Error(message);
  // A query or load BigQuery finds invalid for what the batch holds (a value it cannot cast, a row too large).
  if (reasons.includes('invalid') || reasons.includes('invalidQuery')) return new RefusedError(message);
  if ((code !== undefined && code >= 400) || reasons.some((reason) => PERMANENT_REASONS.has(reason))) return new PermanentError(message);
  return new Error(message);
}
