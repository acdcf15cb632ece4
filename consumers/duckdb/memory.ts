import type { DuckDBConnection } from '@duckdb/node-api';

/**
 * DuckDB's memory_limit where the user set none: low, raised when a batch needs more.
 *
 * DuckDB's own default is 80 % of the machine's memory, and it keeps every block it wrote
 * cached up to it: in a 10 M-row backfill the consumer held 120 MB of table blocks it would
 * never read again. A low limit makes DuckDB drop them (they are in the file), at the same
 * speed. But a limit that low cannot hold a single very large value (a 100 MB document, read
 * through a CSV buffer of many times its size): a batch that runs out of memory is applied
 * again under a limit four times higher, up to DuckDB's default, and the limit stays there.
 */
export class MemoryLimit {
  private constructor(
    private bytes: number,
    /** DuckDB's default for this machine: never raised beyond. */
    private readonly ceiling: number,
  ) {}

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
    await connection.run(`SET memory_limit = '${Math.floor(this.bytes / 1024)}KiB'`);
  }

  /** After an out-of-memory error: a higher limit, or false when it is at DuckDB's default already. */
  async raise(connection: DuckDBConnection): Promise<boolean> {
    if (this.bytes >= this.ceiling) return false;
    this.bytes = Math.min(this.bytes * 4, this.ceiling);
    await this.set(connection);
    return true;
  }

  get megabytes(): number {
    return Math.round(this.bytes / 2 ** 20);
  }
}

/** The limit a consumer starts with: peak RSS in a 10 M-row backfill 430 MB rather than 510, same speed. */
const START_BYTES = 128 * 2 ** 20;

export const OUT_OF_MEMORY = /Out of Memory Error/;

const UNITS: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30, TIB: 2 ** 40 };

/** A size as DuckDB shows a setting ("18.6 GiB", "128.0 MiB"). */
export function parseSize(text: string): number {
  const match = /^\s*([\d.]+)\s*([KMGT]?I?B)\s*$/i.exec(text);
  if (!match) throw new Error(`DuckDB's memory_limit is "${text}", not a size`);
  return Number(match[1]) * UNITS[match[2].toUpperCase()];
}
