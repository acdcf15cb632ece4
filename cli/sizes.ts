// Sizes in flags: what users type (8MiB) and what help shows.
import { InvalidArgumentError } from 'commander';

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
};
/** A size in bytes: a number, or one with a unit (`64MiB`, `8 MB`, `1.5GiB`). */
export const bytes = (value: string) => {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(value);
  const unit = match ? UNITS[match[2].toLowerCase()] : undefined;
  if (!match || unit === undefined) throw new InvalidArgumentError(`expected a size in bytes, e.g. 8388608, 8MiB or 8MB (got "${value}")`);
  return Math.round(Number(match[1]) * unit);
};
/** Bytes as people write them: 8 MiB, 256 MiB. */
export const sizeText = (value: number) =>
  value % 1024 ** 3 === 0 ? `${value / 1024 ** 3} GiB` : value % 1024 ** 2 === 0 ? `${value / 1024 ** 2} MiB` : `${value} bytes`;
