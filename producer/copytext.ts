import type { Value } from '../shared/events.js';

/**
 * Splits COPY … TO STDOUT text-format output into rows of values, chunk by chunk, without
 * ever holding more than one partial line. Raw newlines only end rows (newlines inside values
 * arrive escaped as \n), so a row boundary is found without decoding.
 */
export class CopyTextParser {
  private pending: Buffer | undefined;

  /** Returns the complete rows in this chunk; a trailing partial row waits for the next chunk. */
  push(chunk: Buffer): Value[][] {
    const buffer = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    const rows: Value[][] = [];
    let start = 0;
    for (let end = buffer.indexOf(0x0a, start); end !== -1; end = buffer.indexOf(0x0a, start)) {
      rows.push(parseLine(buffer.toString('utf8', start, end)));
      start = end + 1;
    }
    this.pending = start < buffer.length ? buffer.subarray(start) : undefined;
    return rows;
  }

  end(): void {
    if (this.pending) throw new Error('COPY output ended in the middle of a row');
  }
}

function parseLine(line: string): Value[] {
  const fields = line.split('\t');
  const values: Value[] = new Array(fields.length);
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i];
    if (field === '\\N') values[i] = null;
    else values[i] = field.includes('\\') ? unescapeCopyText(field) : field;
  }
  return values;
}

const ESCAPES: Record<string, string> = { b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v' };

/**
 * Undoes COPY text escaping. COPY TO only ever writes \b \f \n \r \t \v and \\ (octal and hex
 * escapes are accepted by COPY FROM but never produced), so those are all we need to read.
 */
export function unescapeCopyText(field: string): string {
  return field.replace(/\\(.)/gs, (_, char: string) => ESCAPES[char] ?? char);
}
