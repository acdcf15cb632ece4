import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { CsvDialect } from '../../shared/csv.js';

/** How the DuckDB destination stages rows in files for DuckDB's CSV reader. */

const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;

/** Writes `pieces` over the file's old contents (not truncated first: see withFiles), then cuts it to their length. */
export async function rewriteFile(path: string, pieces: Buffer[]): Promise<void> {
  const handle = await open(path, constants.O_WRONLY | constants.O_CREAT);
  try {
    let position = 0;
    for (const piece of pieces) {
      for (let at = 0; at < piece.length; ) at += (await handle.write(piece, at, piece.length - at, position + at)).bytesWritten;
      position += piece.length;
    }
    await handle.truncate(position);
  } finally {
    await handle.close();
  }
}

/** The longest line DuckDB's CSV reader takes unless told otherwise (its max_line_size). */
const CSV_LINE_LIMIT = 2_000_000;

/** DuckDB's CSV reader cuts files into buffers of this many times its longest line (its default buffer_size). */
const LINES_PER_BUFFER = 16;

/**
 * read_csv of lines in `dialect`: `width` text columns c0, c1, …, and a BOOLEAN column `flag`
 * after them when given. Quoted values (if the dialect quotes) have the quote doubled inside;
 * NULL is the dialect's null text, unquoted. `longestLine`: no line is longer (in bytes); the
 * reader is told when that is beyond its default limit (a large text or JSON value).
 *
 * `wholeFilesOf`: the largest file's size, when each file is to be read as one buffer. DuckDB
 * inserts each buffer's rows as a batch of row groups; where a batch ends inside a row group,
 * the partial groups are merged and compressed again. Copy chunks hold whole row groups, and
 * the default buffer (32 MB) holds a chunk of one; a larger chunk gets a buffer of its size
 * when several files are read (chunks of four row groups, 41 MB, two to an INSERT: 22–28 %
 * faster, 10–17 % less CPU). With one file only, the default buffers let both threads share it.
 */
export function csvSource(files: string[], width: number, longestLine: number, options: { dialect: CsvDialect; flag?: string; wholeFilesOf?: number }): string {
  const columns = Array.from({ length: width }, (_, index) => `'c${index}': 'VARCHAR'`);
  if (options.flag) columns.push(`'${options.flag}': 'BOOLEAN'`);
  const lineLimit = Math.max(CSV_LINE_LIMIT, longestLine + 1);
  const limit = longestLine >= CSV_LINE_LIMIT ? `, max_line_size = ${lineLimit}` : '';
  const buffer =
    options.wholeFilesOf !== undefined && files.length > 1 ? `, buffer_size = ${csvBufferBytes(files.length, longestLine, options.wholeFilesOf)}` : '';
  return `read_csv([${files.map(literal).join(', ')}], header = false, delim = ${literal(options.dialect.delimiter)}, quote = ${literal(options.dialect.quote)}, escape = ${literal(options.dialect.quote)}, nullstr = ${literal(options.dialect.nullText)}, allow_quoted_nulls = false, auto_detect = false, new_line = '\\n'${limit}${buffer}, columns = {${columns.join(', ')}})`;
}

/** The size of each buffer csvSource's reader takes (the same arguments). */
export function csvBufferBytes(files: number, longestLine: number, wholeFilesOf?: number): number {
  const lines = LINES_PER_BUFFER * Math.max(CSV_LINE_LIMIT, longestLine + 1);
  return wholeFilesOf !== undefined && files > 1 ? Math.max(wholeFilesOf + 1, lines) : lines;
}

/**
 * A value of Postgres' text COPY format (the SQL `value`) as it was before escaping. COPY TO
 * escapes a backslash as `\\` and a few control characters as `\n`, `\t`, `\r`, `\b`, `\f`,
 * `\v`, nothing else. Values without a backslash, nearly all, are only searched for one; those
 * whose every escape is a backslash (JSON or arrays with quotes in them) have them halved in one
 * replace; the rest are cut at each escaped backslash, the escapes of each part replaced, and
 * the parts joined by backslashes.
 */
export function unescapedCopyText(value: string): string {
  const parts = `string_split(${value}, '\\\\')`;
  const escapes: [string, number][] = [
    ['n', 10],
    ['t', 9],
    ['r', 13],
    ['b', 8],
    ['f', 12],
    ['v', 11],
  ];
  const unescaped = escapes.reduce((part, [letter, code]) => `replace(${part}, '\\${letter}', chr(${code}))`, 'part');
  return `CASE WHEN NOT contains(${value}, '\\') THEN ${value} WHEN NOT regexp_matches(${value}, '\\\\[nrtbfv]') THEN replace(${value}, '\\\\', '\\') ELSE array_to_string(list_transform(${parts}, part -> ${unescaped}), '\\') END`;
}
