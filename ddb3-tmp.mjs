import { DuckDBInstance } from '@duckdb/node-api';
import { rmSync, writeFileSync } from 'node:fs';
rmSync('/tmp/ddb3.db', { force: true }); rmSync('/tmp/ddb3.db.wal', { force: true });
const inst = await DuckDBInstance.create('/tmp/ddb3.db', { threads: process.env.T ?? '2' });
const c = await inst.connect();
await c.run(`CREATE TABLE t (id BIGINT, name VARCHAR, amount DECIMAL(12,2), updated TIMESTAMPTZ)`);
await c.run(`INSERT INTO t SELECT g, 'n' || g, g / 100.0, now() FROM range(1, 1000001) r(g)`);
await c.run('CHECKPOINT');
const V = process.env.V ?? 'temp';
const B = Number(process.env.B ?? 20000);
const times = { stage: 0, del: 0, ins: 0 };
const t0 = performance.now();
for (let start = 1; start <= 1000000; start += B) {
  let csv = '';
  for (let i = start; i < start + B; i++) csv += `"${i}","n${i}","${(i / 100 + 1).toFixed(2)}","2026-11-24 21:00:00.123+00",f\n`;
  writeFileSync('/tmp/stage.csv', csv);
  await c.run('BEGIN');
  let a = performance.now();
  const src = `read_csv('/tmp/stage.csv', header = false, delim = ',', quote = '"', escape = '"', nullstr = '', allow_quoted_nulls = false, auto_detect = false, new_line = '\\n', columns = {'c0': 'VARCHAR', 'c1': 'VARCHAR', 'c2': 'VARCHAR', 'c3': 'VARCHAR', 'd': 'BOOLEAN'})`;
  if (V === 'temp') await c.run(`CREATE OR REPLACE TEMP TABLE s AS SELECT * FROM ${src}`);
  else if (V === 'reuse') { await c.run(`CREATE TEMP TABLE IF NOT EXISTS s (c0 VARCHAR, c1 VARCHAR, c2 VARCHAR, c3 VARCHAR, d BOOLEAN)`); await c.run('DELETE FROM s'); await c.run(`INSERT INTO s SELECT * FROM ${src}`); }
  const S = V === 'twice' ? src : 's';
  let b = performance.now(); times.stage += b - a;
  await c.run(`DELETE FROM t USING ${S} s WHERE t.id = CAST(s.c0 AS BIGINT)`);
  a = performance.now(); times.del += a - b;
  await c.run(`INSERT INTO t SELECT CAST(s.c0 AS BIGINT), s.c1, CAST(NULLIF(s.c2, 'NaN') AS DECIMAL(12,2)), CASE WHEN s.c3 LIKE '% BC' THEN NULL ELSE CAST(s.c3 AS TIMESTAMPTZ) END FROM ${S} s WHERE NOT s.d`);
  b = performance.now(); times.ins += b - a;
  await c.run('COMMIT');
}
console.log(V, 'T', process.env.T, 'B', B, 'total', Math.round(performance.now() - t0), Object.fromEntries(Object.entries(times).map(([k, v]) => [k, Math.round(v)])));
