/**
 * Log sequence numbers are 64-bit WAL positions. We keep them as bigint everywhere so that
 * comparisons are exact, and print them the way Postgres does ("16/B374D848").
 */
export type Lsn = bigint;

export const ZERO_LSN: Lsn = 0n;

export function parseLsn(text: string): Lsn {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!match) throw new Error(`not an LSN: ${JSON.stringify(text)} (expected the form 16/B374D848)`);
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`);
}

export function formatLsn(lsn: Lsn): string {
  const high = (lsn >> 32n).toString(16).toUpperCase();
  const low = (lsn & 0xffffffffn).toString(16).toUpperCase();
  return `${high}/${low}`;
}

export function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a > b ? a : b;
}

/**
 * Every change has a version: the LSN of its transaction's commit and its position in the
 * transaction (1, 2, …). A table copy taken at snapshot LSN S has version (S, 0), below every
 * change streamed after it. Versions increase in stream order, which makes applying idempotent.
 */
export interface Version {
  lsn: Lsn;
  ordinal: number;
}

export function compareVersions(a: Version, b: Version): number {
  if (a.lsn !== b.lsn) return a.lsn < b.lsn ? -1 : 1;
  return a.ordinal - b.ordinal;
}
