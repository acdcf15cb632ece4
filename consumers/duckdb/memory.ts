import type { DuckDBConnection } from '@duckdb/node-api';

/**
 * DuckDB's memory_limit where the user set none: low, raised when a batch needs more.
 *
 * DuckDB's own default is 80 % of the machine's memory, and it keeps every block it wrote
 * cached up to it: in a 10 M-row backfill the consumer held 120 MB of table blocks it would
 * never read again. A low limit makes DuckDB drop them (they are in the file), at the same
 * speed. A statement that reads large CSV buffers (chunks of wide rows, a very large value) is
 * given the room they take; a copy is given only that room, even below the base (forCopy). A
 * batch that still runs out of memory is applied again under a limit four times higher (up to
 * DuckDB's default) as often as it takes. After each apply the limit goes back to the base.
 */
export class MemoryLimit {
  /** The limit now: the base, or more while a statement that needs more runs (atLeast). */
  private current: number;
  /** Raised after running out of memory: no statement of the same apply goes below it (until settle). */
  private floor = 0;

  private constructor(
    /** The limit between applies. */
    private readonly base: number,
    /** DuckDB's default for this machine: never raised beyond. */
    private readonly ceiling: number,
  ) {
    this.current = base;
  }

  /**
   * For a database the user gave no memory_limit: the limit, set on `connection`. Undefined
   * when the user chose one, or for an in-memory database (whose tables cannot leave memory).
   */
  static async start(connection: DuckDBConnection, settings: Record<string, string>, path: string): Promise<MemoryLimit | undefined> {
    if (path === ':memory:' || Object.keys(settings).some((name) => /^(memory_limit|max_memory)$/i.test(name))) return undefined;
    const ceiling = parseSize(String((await connection.runAndReadAll("SELECT current_setting('memory_limit')")).getRows()[0][0]));
    const limit = new MemoryLimit(Math.min(START_BYTES, ceiling), ceiling);
    await limit.set(connection);
    return limit;
  }

  /** Sets the limit on a database opened again. */
  async set(connection: DuckDBConnection): Promise<void> {
    await connection.run(`SET memory_limit = '${Math.floor(this.current / 1024)}KiB'`);
  }

  /** Before a statement known to need `bytes` (CSV buffers of a large chunk): at least that much, until settle(). */
  async atLeast(connection: DuckDBConnection, bytes: number): Promise<void> {
    if (bytes <= this.current || this.current >= this.ceiling) return;
    this.current = Math.min(bytes, this.ceiling);
    await this.set(connection);
  }

  /**
   * Before a copy's statement, which needs `bytes` for its CSV buffers and the row groups it
   * builds: that much (at least COPY_FLOOR_BYTES), below the base too. A copy only appends, and
   * never reads back the blocks it wrote, which DuckDB would otherwise keep cached up to the
   * limit: in a 10 M-row backfill the consumer's peak RSS went from 336 to 277 MB (under the
   * base's 128 MB against the 84 MB its narrow chunks need), at the same speed. The room beside
   * the buffers stays 64 MB: with 32 MB a 1 M-row JSON copy, whose row groups are about 120 MB,
   * took 14.6 s against 12.1. Changes stay under the base: their DELETEs read stored blocks,
   * which the cache keeps near.
   */
  async forCopy(connection: DuckDBConnection, bytes: number): Promise<void> {
    const limit = Math.min(Math.max(bytes, COPY_FLOOR_BYTES, this.floor), this.ceiling);
    if (limit === this.current) return;
    const before = this.current;
    this.current = limit;
    // Lower, DuckDB may refuse it (it holds more pinned): the copy then runs under the limit before.
    await this.set(connection).catch((error) => {
      this.current = before;
      if (limit > before) throw error;
    });
  }

  /** After an apply: back to the base, which makes DuckDB drop the cached blocks above it. */
  async settle(connection: DuckDBConnection): Promise<void> {
    this.floor = 0;
    if (this.current === this.base) return;
    const raised = this.current;
    this.current = this.base;
    // DuckDB refuses a limit below what it holds pinned: the next apply tries again.
    await this.set(connection).catch(() => (this.current = raised));
  }

  /** After an out-of-memory error: four times the limit until settle(), or false when it is at DuckDB's default already. */
  async raise(connection: DuckDBConnection): Promise<boolean> {
    if (this.current >= this.ceiling) return false;
    this.current = this.floor = Math.min(this.current * 4, this.ceiling);
    await this.set(connection);
    return true;
  }

  /** Whether the limit is above the base now (a statement's room, a raise). */
  get raised(): boolean {
    return this.current > this.base;
  }

  get baseMegabytes(): number {
    return Math.round(this.base / 2 ** 20);
  }

  get megabytes(): number {
    return Math.round(this.current / 2 ** 20);
  }
}

/** The limit a consumer starts with: alone, it took the peak RSS of a 10 M-row backfill from 510 to 428 MB at the same speed. */
const START_BYTES = 128 * 2 ** 20;

/** A copy's statement runs under at least this limit (see forCopy). */
const COPY_FLOOR_BYTES = 64 * 2 ** 20;

export const OUT_OF_MEMORY = /Out of Memory Error/;

const UNITS: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30, TIB: 2 ** 40 };

/** A size as DuckDB shows a setting ("18.6 GiB", "128.0 MiB"). */
export function parseSize(text: string): number {
  const match = /^\s*([\d.]+)\s*([KMGT]?I?B)\s*$/i.exec(text);
  if (!match) throw new Error(`DuckDB's memory_limit is "${text}", not a size`);
  return Number(match[1]) * UNITS[match[2].toUpperCase()];
}
