import type { Value } from './events.js';

/**
 * Rows of Postgres' CSV COPY format (how table copies travel): comma-separated, `"` quotes with
 * `""` inside, an unquoted empty field is NULL and a quoted one the empty string.
 */
export function parseCsvRows(csv: string): Value[][] {
  const rows: Value[][] = [];
  let row: Value[] = [];
  let i = 0;
  while (i < csv.length) {
    let value: Value;
    if (csv[i] === '"') {
      let text = '';
      i++;
      for (;;) {
        const quote = csv.indexOf('"', i);
        text += csv.slice(i, quote);
        i = quote + 1;
        if (csv[i] === '"') {
          text += '"';
          i++;
        } else break;
      }
      value = text;
    } else {
      let end = i;
      while (end < csv.length && csv[end] !== ',' && csv[end] !== '\n') end++;
      value = end === i ? null : csv.slice(i, end);
      i = end;
    }
    row.push(value);
    if (csv[i] === ',') {
      i++;
    } else {
      rows.push(row);
      row = [];
      i++;
    }
  }
  return rows;
}
