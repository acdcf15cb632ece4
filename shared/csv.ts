import type { Value } from './events.js';

/** How the values of a delimited text are told apart: its delimiter, its quote (none: '') and how it writes NULL ('': an unquoted empty value). */
export interface CsvDialect {
  delimiter: string;
  quote: string;
  nullText: string;
}

/**
 * How table copies travel: Postgres' text COPY format. Values are tab-separated, NULL is \N,
 * and only backslashes, tabs, line breaks and a few control characters are escaped (with a
 * backslash), so each row is one line and almost no value needs any work. Postgres writes it
 * for about a tenth less CPU than CSV (the bench's table: 1.3 s against 1.45 s for two million
 * rows), and a copy's CPU on the source database is what its users feel. DuckDB reads it as CSV
 * without quotes; the few values that hold a backslash are unescaped in SQL (consumers/duckdb),
 * in JS by parseCopyRows.
 */
export const COPY_TEXT: CsvDialect = { delimiter: '\t', quote: '', nullText: '\\N' };

/** Commas and double quotes, as the consumers write CSV for DuckDB themselves. */
export const PLAIN_CSV: CsvDialect = { delimiter: ',', quote: '"', nullText: '' };

/** The options of `COPY … TO STDOUT (…)` that produce COPY_TEXT. */
export const COPY_TEXT_OPTIONS = 'FORMAT text';

/** Rows of Postgres' text COPY format: each line a row, its values tab-separated, \N for NULL. */
export function parseCopyRows(text: string): Value[][] {
  const rows: Value[][] = [];
  for (let start = 0; start < text.length; ) {
    const end = text.indexOf('\n', start);
    const line = text.slice(start, end < 0 ? text.length : end);
    start = end < 0 ? text.length : end + 1;
    rows.push(line.split('\t').map((value) => (value === '\\N' ? null : value.includes('\\') ? unescapeCopyText(value) : value)));
  }
  return rows;
}

const ESCAPED: Record<string, string> = { b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v' };

/** A value of Postgres' text COPY format as it was before escaping (COPY TO escapes no more than this undoes). */
export function unescapeCopyText(value: string): string {
  return value.replace(/\\(.)/gs, (_, character: string) => ESCAPED[character] ?? character);
}

/**
 * Rows of CSV in `dialect` (as the consumers write it): values between delimiters, quoted
 * values with the quote doubled inside; an unquoted empty value is NULL and a quoted one the
 * empty string.
 */
export function parseCsvRows(csv: string, dialect: CsvDialect): Value[][] {
  const { delimiter, quote } = dialect;
  const rows: Value[][] = [];
  let row: Value[] = [];
  let i = 0;
  while (i < csv.length) {
    let value: Value;
    if (csv[i] === quote) {
      let text = '';
      i++;
      for (;;) {
        const end = csv.indexOf(quote, i);
        text += csv.slice(i, end);
        i = end + 1;
        if (csv[i] === quote) {
          text += quote;
          i++;
        } else break;
      }
      value = text;
    } else {
      let end = i;
      while (end < csv.length && csv[end] !== delimiter && csv[end] !== '\n') end++;
      value = end === i ? null : csv.slice(i, end);
      i = end;
    }
    row.push(value);
    if (csv[i] === delimiter) {
      i++;
    } else {
      rows.push(row);
      row = [];
      i++;
    }
  }
  return rows;
}
