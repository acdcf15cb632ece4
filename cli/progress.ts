import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import type { Redis } from 'ioredis';
import { keys } from '../shared/keys.js';
import { takeLogLines } from '../shared/log.js';
import { readCopyApplied, readCopyProgress } from '../shared/redis.js';
import { connectRedis } from '../shared/redistarget.js';

/** How often the view reads Redis and redraws. */
const REFRESH_MS = 500;
const number = (value: number) => Math.round(value).toLocaleString('en-US');

/**
 * The producer's view on a terminal: a bar per table of the initial copy (rows applied by the
 * slowest destination, out of Postgres' estimate, rows/s and ETA), then one line about the
 * stream, redrawn in place (changes/s read from the slot, where each destination has applied
 * up to). It reads what `status` reads, from Redis; log lines are written above it.
 */
export class TerminalProgress {
  private readonly bars = new Map<number, SingleBar>();
  private multibar?: MultiBar;
  private summary?: string;
  private last?: { at: number; read: number };
  private timer?: NodeJS.Timeout;
  private releaseLogs?: () => void;
  private refreshing = Promise.resolve();
  /** The copy's bars are done with (drawn to the end, or there was no copy in this run). */
  private copyShown = false;
  private readonly startedAt = Date.now();

  private constructor(
    private readonly redis: Redis,
    private readonly pipeline: string,
    /** Whether the stream follows the copy (not `--mode copy`). */
    private readonly streams: boolean,
    private readonly out: NodeJS.WriteStream,
  ) {}

  static async start(redisUrl: string, pipeline: string, streams: boolean, out: NodeJS.WriteStream = process.stderr): Promise<TerminalProgress> {
    const view = new TerminalProgress(connectRedis(redisUrl), pipeline, streams, out);
    view.redis.on('error', () => {});
    view.releaseLogs = await takeLogLines((text) => view.log(text));
    view.timer = setInterval(() => {
      view.refreshing = view.refreshing.then(() => view.refresh().catch(() => {}));
    }, REFRESH_MS);
    return view;
  }

  /** Writes log text above the view. */
  log(text: string): void {
    if (this.multibar) this.multibar.log(text);
    else if (this.summary !== undefined) this.out.write(`\r\x1b[2K${text}${this.summary}`);
    else this.out.write(text);
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.refreshing;
    await this.refresh().catch(() => {});
    this.multibar?.stop();
    if (this.summary !== undefined) this.out.write('\n');
    this.releaseLogs?.();
    this.redis.disconnect();
  }

  private async refresh(): Promise<void> {
    const state = await this.redis.hgetall(keys.state(this.pipeline));
    if (!state.slot) return;
    if (state.copy === 'started' || state.copy === 'enqueued') await this.drawCopy();
    else if (state.copy === 'done' || state.copy === undefined) {
      // A copy of this run over between two drawings is still shown, whole.
      if (!this.copyShown && state.copy === 'done') await this.drawCopy(this.startedAt);
      this.endCopy();
      if (this.streams) this.drawStream(state);
    }
  }

  /** Bars of the initial copy's tables (those started since `since`, when given). */
  private async drawCopy(since = 0): Promise<void> {
    const [all, applied] = await Promise.all([readCopyProgress(this.redis, this.pipeline), readCopyApplied(this.redis, this.pipeline)]);
    const progress = [...all].filter(([, table]) => table.startedAt >= since);
    if (progress.length === 0) return;
    this.multibar ??= new MultiBar(
      {
        stream: this.out,
        clearOnComplete: false,
        hideCursor: true,
        format: ' {bar} {percentage}% | {table} | {value}/{total} rows | {speed} rows/s | ETA {eta_formatted}',
        formatValue: (value, _options, type) => (type === 'value' || type === 'total' ? number(value) : String(value)),
        etaBuffer: 20,
      },
      Presets.shades_classic,
    );
    for (const [oid, table] of progress) {
      const rows = applied.get(oid) ?? 0;
      // Without an estimate (a table never analyzed), the rows copied so far are the total.
      const total = Math.max(table.estimatedRows ?? 0, table.rows, rows, 1);
      const seconds = (Date.now() - table.startedAt) / 1000;
      const payload = { table: `${table.schema}.${table.name}`, speed: number(seconds > 0 ? rows / seconds : 0) };
      const bar = this.bars.get(oid);
      if (!bar) this.bars.set(oid, this.multibar.create(total, rows, payload));
      else {
        bar.setTotal(total);
        bar.update(rows, payload);
      }
    }
  }

  /** The copy is applied everywhere: each bar shows its table whole, and the bars stay above the stream's line. */
  private endCopy(): void {
    this.copyShown = true;
    if (!this.multibar) return;
    for (const bar of this.bars.values()) bar.update(bar.getTotal());
    this.multibar.stop();
    this.multibar = undefined;
  }

  private drawStream(state: Record<string, string>): void {
    const read = Number(state.changesRead ?? 0);
    const now = Date.now();
    const rate = this.last && now > this.last.at ? ((read - this.last.read) * 1000) / (now - this.last.at) : 0;
    this.last = { at: now, read };
    const applied = Object.entries(state)
      .filter(([field]) => field.startsWith('applied:'))
      .map(([field, lsn]) => `${field.slice('applied:'.length)} applied up to ${lsn}`);
    this.summary = `streaming: ${number(rate)} changes/s read, ${number(read)} since the producer started${applied.length > 0 ? `; ${applied.join(', ')}` : ''}`;
    this.out.write(`\r\x1b[2K${this.summary}`);
  }
}
