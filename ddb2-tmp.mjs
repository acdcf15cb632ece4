import { DuckDBInstance } from '@duckdb/node-api';
import { rmSync } from 'node:fs';
const threads = process.env.T ?? '2';
const cols = `{'c0':'VARCHAR','c1':'VARCHAR','c2':'VARCHAR','c3':'VARCHAR','c4':'VARCHAR'}`;
const sel = `CAST(s.c0 AS BIGINT), s.c1, CAST(NULLIF(s.c2,'NaN') AS DECIMAL(12,2)), CASE WHEN s.c3 LIKE '% BC' THEN NULL ELSE CAST(s.c3 AS TIMESTAMPTZ) END, CAST(s.c4 AS JSON)`;
rmSync('/tmp/ddb.db', { force: true }); rmSync('/tmp/ddb.db.wal', { force: true });
const inst = await DuckDBInstance.create('/tmp/ddb.db', { threads });
const c = await inst.connect();
await c.run(`CREATE TABLE t (c0 BIGINT, c1 VARCHAR, c2 DECIMAL(12,2), c3 TIMESTAMPTZ, c4 JSON)`);
const cpu0 = process.cpuUsage(); const t0 = performance.now();
for (let i = 0; i < 8; i++) { await c.run('BEGIN'); await c.run(`INSERT INTO t SELECT ${sel} FROM read_csv('/tmp/chunk${i}.csv', header=false, delim=',', quote='"', escape='"', nullstr='', allow_quoted_nulls=false, auto_detect=false, new_line='\\n', columns=${cols}) s`); await c.run('COMMIT'); }
const cpu = process.cpuUsage(cpu0);
console.log('threads', threads, 'wall', ((performance.now() - t0)/1000).toFixed(2), 'cpu', ((cpu.user + cpu.system)/1e6).toFixed(2));
