import { RefusedError } from './destination.js';

/**
 * Postgres array text ("{1,NULL,"a b"}", "{{1,2},{3,4}}", "[0:1]={1,2}") as a JSON array of
 * strings and nulls nested to the given depth (what DuckDB casts to a list, and BigQuery
 * stores as JSON).
 */
export function pgArrayToJson(text: string, dimensions: number): string {
  let position = 0;
  // An explicit lower bound ("[0:1]=") is not kept: DuckDB lists start at 1.
  if (text.startsWith('[')) position = text.indexOf('=') + 1;
  const parse = (depth: number): unknown[] => {
    if (text[position] !== '{') throw new RefusedError(`malformed array literal: ${text.slice(0, 80)}`);
    position++;
    const items: unknown[] = [];
    if (text[position] === '}') {
      position++;
      return items;
    }
    for (;;) {
      if (text[position] === '{') {
        items.push(parse(depth + 1));
      } else {
        items.push(element());
      }
      const next = text[position++];
      if (next === '}') break;
      if (next !== ',') throw new RefusedError(`malformed array literal: ${text.slice(0, 80)}`);
    }
    if (depth === 1 && items.length > 0 && Array.isArray(items[0]) !== dimensions > 1) {
      throw new RefusedError(
        `an array with ${Array.isArray(items[0]) ? 'more' : 'fewer'} dimensions than the column declares (${dimensions}): declare the column with its dimensions (e.g. int[][]) on the source`,
      );
    }
    return items;
  };
  const element = (): string | null => {
    if (text[position] === '"') {
      position++;
      let value = '';
      while (text[position] !== '"') {
        if (text[position] === '\\') position++;
        value += text[position++];
      }
      position++;
      return value;
    }
    let end = position;
    while (text[end] !== ',' && text[end] !== '}') end++;
    const raw = text.slice(position, end);
    position = end;
    if (raw === 'NULL') return null;
    return raw;
  };
  return JSON.stringify(parse(1));
}
