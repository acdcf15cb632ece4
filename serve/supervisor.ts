import type { Redis } from 'ioredis';
import { type RunningPipeline, startPipeline } from '../cli/pipeline.js';
import { parseRunConfig, type RunFile } from '../cli/runfile.js';
import type { DestinationPlugin } from '../consumers/plugin.js';
import { errorMessage, UserError } from '../shared/errors.js';
import { SERVED_PIPELINES } from '../shared/keys.js';
import { log } from '../shared/log.js';

/** What the server knows of a pipeline it runs: running, or ended by an error someone must fix. */
export interface ServedState {
  state: 'starting' | 'running' | 'failed';
  /** Why it ended (redacted), when it failed. */
  error?: string;
  since: string;
}

/**
 * Runs the pipelines created through the API, each from its run configuration, in this
 * process. The configurations live in Redis (SERVED_PIPELINES), so a restarted server resumes
 * every pipeline it ran; each pipeline resumes from its slot and its destinations' marks.
 */
export class Supervisor {
  private readonly running = new Map<string, { config: RunFile; pipeline?: RunningPipeline; status: ServedState }>();

  constructor(
    private readonly redis: Redis,
    private readonly plugins: DestinationPlugin[],
  ) {}

  /** Starts every pipeline recorded in Redis. One whose configuration no longer parses (a destination type gone) is reported failed, not dropped. */
  async resume(): Promise<void> {
    for (const [id, text] of Object.entries(await this.redis.hgetall(SERVED_PIPELINES))) {
      try {
        await this.start(parseRunConfig(JSON.parse(text), this.plugins, `the stored configuration of pipeline ${id}`));
      } catch (error) {
        this.running.set(id, { config: JSON.parse(text), status: { state: 'failed', error: errorMessage(error), since: new Date().toISOString() } });
      }
    }
  }

  /** The pipelines this server runs, by id. */
  get ids(): string[] {
    return [...this.running.keys()];
  }

  config(id: string): RunFile | undefined {
    return this.running.get(id)?.config;
  }

  status(id: string): ServedState | undefined {
    return this.running.get(id)?.status;
  }

  /** Records a new pipeline and starts it. */
  async create(config: RunFile): Promise<void> {
    if (!(await this.redis.hsetnx(SERVED_PIPELINES, config.pipeline, JSON.stringify(config)))) {
      throw new UserError(`pipeline ${config.pipeline} is already run by a server`);
    }
    try {
      await this.start(config);
    } catch (error) {
      // A pipeline that could not start is not kept: its creator gets the error and fixes the request.
      this.running.delete(config.pipeline);
      await this.redis.hdel(SERVED_PIPELINES, config.pipeline);
      throw error;
    }
  }

  /** Replaces a pipeline's configuration and restarts it with the new one (a destination added or removed). */
  async reconfigure(config: RunFile): Promise<void> {
    await this.stop(config.pipeline);
    await this.redis.hset(SERVED_PIPELINES, config.pipeline, JSON.stringify(config));
    await this.start(config);
  }

  /** Starts a pipeline again from its stored configuration (after it failed on something since fixed). */
  async restart(id: string): Promise<void> {
    const config = this.config(id);
    if (!config) throw new UserError(`pipeline ${id} is not run by this server`);
    await this.stop(id);
    await this.start(config);
  }

  /** Stops a pipeline and forgets its configuration (its slot and keys stay until dropped). */
  async remove(id: string): Promise<void> {
    await this.stop(id);
    this.running.delete(id);
    await this.redis.hdel(SERVED_PIPELINES, id);
  }

  async close(): Promise<void> {
    await Promise.all(this.ids.map((id) => this.stop(id)));
  }

  private async start(config: RunFile): Promise<void> {
    const entry = { config, status: { state: 'starting', since: new Date().toISOString() } as ServedState, pipeline: undefined as RunningPipeline | undefined };
    this.running.set(config.pipeline, entry);
    try {
      entry.pipeline = await startPipeline(config, this.plugins);
    } catch (error) {
      entry.status = { state: 'failed', error: errorMessage(error), since: new Date().toISOString() };
      throw error;
    }
    entry.status = { state: 'running', since: new Date().toISOString() };
    log.info({ pipeline: config.pipeline }, 'pipeline started');
    const pipeline = entry.pipeline;
    pipeline.done.then(
      () => {},
      (error) => {
        // Only the run that failed is marked: a pipeline restarted since has its own.
        if (entry.pipeline !== pipeline) return;
        entry.status = { state: 'failed', error: errorMessage(error), since: new Date().toISOString() };
        log.error({ pipeline: config.pipeline, err: errorMessage(error) }, 'pipeline failed: fix the cause, then create it again or restart the server');
        void pipeline.stop();
      },
    );
  }

  private async stop(id: string): Promise<void> {
    const entry = this.running.get(id);
    const pipeline = entry?.pipeline;
    if (!entry || !pipeline) return;
    entry.pipeline = undefined;
    await pipeline.stop();
  }
}
