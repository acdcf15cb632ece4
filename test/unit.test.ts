import { EventEmitter } from 'node:events';
import test, { type ExecutionContext } from 'ava';
import { collapseByKey } from '../consumers/collapse.js';
import { parseSize } from '../consumers/duckdb/memory.js';
import { collapseImagesToCsv, collapseImagesToCsvAside } from '../consumers/imagescsv.js';
import { KeyIndex } from '../consumers/keyindex.js';
import { planBatch, planBatches } from '../consumers/plan.js';
import { AckTracker } from '../producer/acks.js';
import { Batcher, Sequencer } from '../producer/batcher.js';
import { decodePgoutput } from '../producer/pgoutput.js';
import { CopyBothReader } from '../producer/replication.js';
import { ChangeRecords, decodeBatch, encodeBatch, outgoing } from '../shared/codec.js';
import { PLAIN_CSV, parseCopyRows, parseCsvRows } from '../shared/csv.js';
import { redact } from '../shared/errors.js';
import { type Batch, type Change, type OutgoingBatch, type Relation, type RowChange, UNCHANGED, type Value } from '../shared/events.js';
import { partitionOf } from '../shared/keys.js';
import { compareVersions, formatLsn, parseLsn } from '../shared/lsn.js';
import { jsonFragment, numericPrecision, PgType } from '../shared/pgtypes.js';
import { ByteReader, newTupleAt, readRowImages, rowImages, tupleKey } from '../shared/tupledata.js';
import { chooseSource } from './support/sources.js';

const relation: Relation = {
  oid: 16384,
  schema: 'public',
  name: 'orders',
  replicaIdentity: 'default',
  columns: [
    { name: 'id', typeOid: PgType.int8, typeModifier: -1, isKey: true },
    { name: 'body', typeOid: PgType.text, typeModifier: -1, isKey: false, attnum: 3, distinctShare: 0.75 },
  ],
};

/** Decoded changes as plain values (the codec decodes a change's images when first read). */
function valuesOf(changes: Change[]): Change[] {
  return changes.map((change) =>
    change.op === 'truncate'
      ? change
      : {
          op: change.op,
          relation: change.relation,
          version: change.version,
          ...(change.row ? { row: change.row } : {}),
          ...(change.old ? { old: change.old } : {}),
        },
  );
}

test('LSNs parse, print and compare like Postgres', (t) => {
  t.is(parseLsn('16/B374D848'), 0x16b374d848n);
  t.is(formatLsn(0x16b374d848n), '16/B374D848');
  t.is(formatLsn(0n), '0/0');
  t.throws(() => parseLsn('nope'), { message: /not an LSN/ });
  t.true(compareVersions({ lsn: 5n, ordinal: 9 }, { lsn: 6n, ordinal: 1 }) < 0);
  t.true(compareVersions({ lsn: 6n, ordinal: 2 }, { lsn: 6n, ordinal: 1 }) > 0);
  t.is(compareVersions({ lsn: 6n, ordinal: 0 }, { lsn: 6n, ordinal: 0 }), 0);
});

test('the batch codec round-trips changes, truncates, copies and unchanged TOAST markers', (t) => {
  const batch: Batch = {
    pipeline: 'p',
    partition: 3,
    epoch: 1700000000000,
    seq: 42,
    relations: [relation],
    changes: [
      { op: 'insert', relation: 0, version: { lsn: 0x1_0000_0001n, ordinal: 1 }, row: ['1', 'a\tb'] },
      { op: 'update', relation: 0, version: { lsn: 0x1_0000_0001n, ordinal: 2 }, row: ['2', UNCHANGED], old: ['1', null] },
      { op: 'delete', relation: 0, version: { lsn: 0x1_0000_0001n, ordinal: 3 }, old: ['2', null] },
      { op: 'truncate', relations: [0], version: { lsn: 0x2_0000_0000n, ordinal: 1 }, cascade: true, restartIdentity: false },
    ],
  };
  const decoded = decodeBatch(JSON.parse(JSON.stringify(encodeBatch(outgoing(batch)))));
  t.deepEqual({ ...decoded, changes: valuesOf(decoded.changes) }, batch);
  const copy: Batch = {
    ...batch,
    changes: [],
    copy: { relation: 0, snapshotLsn: 77n, chunk: 2, last: true, rows: 1, bytes: 3, id: '1700000000000.3.9', merge: true, longestRow: 3 },
  };
  t.deepEqual(decodeBatch(JSON.parse(JSON.stringify(encodeBatch(outgoing(copy))))), copy, 'a copy batch carries the id of its rows in Redis');
  const withRows: Batch = { ...copy, copy: { ...copy.copy!, copyText: [Buffer.from('1,\n')] } };
  t.false('csv' in decodeBatch(JSON.parse(JSON.stringify(encodeBatch(outgoing(withRows))))).copy!, 'the rows themselves never travel in the job');
  const empty: Batch = { ...batch, changes: [], copy: { relation: 0, snapshotLsn: 77n, chunk: 3, last: true, rows: 0, bytes: 0 } };
  t.deepEqual(decodeBatch(JSON.parse(JSON.stringify(encodeBatch(outgoing(empty))))), empty, 'a chunk without rows has no id');
  t.throws(() => decodeBatch({ ...encodeBatch(outgoing(batch)), v: 99 }), { message: /codec version 99 is not supported/ });
  // Records written one by one, as the producer's batcher does, across many buffer growths.
  const records = new ChangeRecords();
  const many: Batch['changes'] = [];
  for (let i = 0; i < 3000; i++) {
    const row = [String(i), 'x'.repeat(i % 300)];
    const version = { lsn: 0x7_0000_0000n + BigInt(i >> 4), ordinal: i };
    records.row('insert', 0, version.lsn, version.ordinal, rowImages('insert', row, undefined));
    many.push({ op: 'insert', relation: 0, version, row });
  }
  records.truncate([0], { lsn: 0x8_0000_0000n, ordinal: 1 }, false, true);
  many.push({ op: 'truncate', relations: [0], version: { lsn: 0x8_0000_0000n, ordinal: 1 }, cascade: false, restartIdentity: true });
  const written: OutgoingBatch = { ...outgoing(batch), records: records.bytes() };
  t.deepEqual(valuesOf(decodeBatch(JSON.parse(JSON.stringify(encodeBatch(written)))).changes), many);
});

test('CSV and COPY text parse back to values (quotes, commas, tabs, backslashes, newlines, empty string vs NULL)', (t) => {
  const csv = '1,,"","a,b\n""q"" é"\n2,plain,x,"line\nbreak"\n';
  const values = [
    ['1', null, '', 'a,b\n"q" é'],
    ['2', 'plain', 'x', 'line\nbreak'],
  ];
  t.deepEqual(parseCsvRows(csv, PLAIN_CSV), values);
  // As Postgres writes it: \N for NULL, backslash escapes for backslashes, tabs, line breaks and \b \f \v.
  const copyText = '1\t\\N\t\ta,b\\n"q" é\n2\tplain\tx\tline\\nbreak\n3\t\\\\N\ttab\\there\t\\\\\\r\\b\\f\\v\\\\n\n';
  t.deepEqual(parseCopyRows(copyText), [...values, ['3', '\\N', 'tab\there', '\\\r\b\f\v\\n']]);
});

test('pgoutput messages decode; row images travel undecoded to the consumer, which reads the values as text', (t) => {
  const tuple = (values: (string | null | 'u')[]) => {
    const parts: Buffer[] = [u16(values.length)];
    for (const value of values) {
      if (value === null) parts.push(Buffer.from('n'));
      else if (value === 'u') parts.push(Buffer.from('u'));
      else parts.push(Buffer.from('t'), u32(Buffer.byteLength(value)), Buffer.from(value));
    }
    return Buffer.concat(parts);
  };
  const begin = Buffer.concat([Buffer.from('B'), u64(0x10n), u64(5n), u32(777)]);
  t.deepEqual(decodePgoutput(begin), { tag: 'begin', finalLsn: 0x10n, commitTime: 5n, xid: 777 });
  const rel = Buffer.concat([
    Buffer.from('R'),
    u32(16384),
    Buffer.from('\0orders\0d'),
    u16(2),
    Buffer.from([1]),
    Buffer.from('id\0'),
    u32(20),
    u32(0xffffffff),
    Buffer.from([0]),
    Buffer.from('body\0'),
    u32(25),
    u32(0xffffffff),
  ]);
  t.deepEqual(decodePgoutput(rel), {
    tag: 'relation',
    oid: 16384,
    schema: 'pg_catalog',
    name: 'orders',
    replicaIdentity: 'default',
    columns: [
      { isKey: true, name: 'id', typeOid: 20, typeModifier: -1 },
      { isKey: false, name: 'body', typeOid: 25, typeModifier: -1 },
    ],
  });
  const images = Buffer.concat([Buffer.from('K'), tuple(['1', null]), Buffer.from('N'), tuple(['2 é', 'u'])]);
  const update = Buffer.concat([Buffer.from('U'), u32(16384), images]);
  const decoded = decodePgoutput(update);
  t.deepEqual(decoded, { tag: 'update', relation: 16384, images }, 'row images are passed on undecoded');
  t.is((decoded as { images: Buffer }).images.buffer, update.buffer, 'as a view of the message: nothing is copied until the batch takes them');
  t.deepEqual(readRowImages(new ByteReader((decoded as { images: Buffer }).images), 'update'), { old: ['1', null], row: ['2 é', UNCHANGED] });
  t.deepEqual(rowImages('update', ['2 é', UNCHANGED], ['1', null]), images, 'images built from values are the same bytes');
  const batch: Batch = {
    pipeline: 'p',
    partition: 0,
    epoch: 1,
    seq: 1,
    relations: [],
    changes: [{ op: 'update', relation: 0, version: { lsn: 0x5_0000_0010n, ordinal: 3 }, images }],
  };
  t.deepEqual(
    valuesOf(decodeBatch(JSON.parse(JSON.stringify(encodeBatch(outgoing(batch))))).changes),
    [{ op: 'update', relation: 0, version: { lsn: 0x5_0000_0010n, ordinal: 3 }, old: ['1', null], row: ['2 é', UNCHANGED] }],
    'the consumer decodes them',
  );
  const truncate = Buffer.concat([Buffer.from('T'), u32(2), Buffer.from([3]), u32(1), u32(2)]);
  t.deepEqual(decodePgoutput(truncate), { tag: 'truncate', relations: [1, 2], cascade: true, restartIdentity: true });
  const commit = Buffer.concat([Buffer.from('C'), Buffer.from([0]), u64(0x10n), u64(0x48n), u64(5n)]);
  t.deepEqual(decodePgoutput(commit), { tag: 'commit', commitLsn: 0x10n, endLsn: 0x48n, commitTime: 5n });
});

test('planning gives each table one step of its changes in order, whatever the interleaving, up to a TRUNCATE; a new shape starts a step', (t) => {
  const other: Relation = { ...relation, oid: 16385, name: 'lines' };
  const reshaped: Relation = { ...relation, columns: [...relation.columns, { name: 'note', typeOid: PgType.text, typeModifier: -1, isKey: false }] };
  let ordinal = 0;
  const change = (index: number, id: string): Change => ({ op: 'insert', relation: index, version: { lsn: 10n, ordinal: ++ordinal }, row: [id, 'x'] });
  const batch: Batch = {
    pipeline: 'p',
    partition: 0,
    epoch: 1,
    seq: 1,
    relations: [relation, other, reshaped],
    changes: [
      change(0, 'a1'),
      change(1, 'b1'),
      change(0, 'a2'),
      change(1, 'b2'),
      { op: 'truncate', relations: [1], cascade: false, restartIdentity: false, version: { lsn: 10n, ordinal: ++ordinal } },
      change(1, 'b3'),
      change(0, 'a3'),
      change(1, 'b4'),
      change(2, 'a4'),
    ],
  };
  const steps = planBatch(batch, new Map()).steps.map((step) =>
    step.kind === 'changes' ? `${step.relation === reshaped ? 'orders v2' : step.relation.name}: ${step.changes.map((c) => c.row![0]).join(' ')}` : step.kind,
  );
  t.deepEqual(steps, ['orders: a1 a2', 'lines: b1 b2', 'truncate', 'lines: b3 b4', 'orders: a3', 'orders v2: a4']);
});

test('planning skips changes at or below the table version and re-delivered copy chunks, alone or planned together', (t) => {
  const change = (lsn: bigint, ordinal: number, id: string) => ({ op: 'insert' as const, relation: 0, version: { lsn, ordinal }, row: [id, 'x'] });
  const batch: Batch = {
    pipeline: 'p',
    partition: 0,
    epoch: 1,
    seq: 1,
    relations: [relation],
    changes: [change(10n, 1, '1'), change(10n, 2, '2'), change(11n, 1, '3')],
  };
  const states = new Map([[16384, { copyLsn: 5n, copyChunk: 0, copyDone: true, applied: { lsn: 10n, ordinal: 1 } }]]);
  const plan = planBatch(batch, states);
  t.deepEqual(
    plan.steps.flatMap((step) => (step.kind === 'changes' ? step.changes.map((c) => c.row![0]) : [])),
    ['2', '3'],
  );
  t.deepEqual(plan.states.get(16384)!.applied, { lsn: 11n, ordinal: 1 });
  t.deepEqual(planBatch(batch, new Map([[16384, { ...states.get(16384)!, applied: { lsn: 11n, ordinal: 1 } }]])).steps, []);
  // The same batch as a consumer reads it (changes compared without making their versions), a change delivered twice in it taken once.
  const read = decodeBatch(JSON.parse(JSON.stringify(encodeBatch(outgoing({ ...batch, changes: [...batch.changes, change(10n, 2, '2')] })))));
  const readPlan = planBatch(read, states);
  t.deepEqual(
    readPlan.steps.flatMap((step) => (step.kind === 'changes' ? step.changes.map((c) => c.row![0]) : [])),
    ['2', '3'],
  );
  t.deepEqual(readPlan.states.get(16384)!.applied, { lsn: 11n, ordinal: 1 });

  const copy = (chunk: number): Batch => ({
    ...batch,
    changes: [],
    copy: { relation: 0, snapshotLsn: 20n, chunk, last: false, rows: 1, bytes: 4, id: `1.0.${chunk}`, copyText: [Buffer.from('9,y\n')] },
  });
  t.is(planBatch(copy(0), states).steps.length, 1, 'a new copy starts');
  const copying = new Map([[16384, { copyLsn: 20n, copyChunk: 1, copyDone: false, applied: { lsn: 20n, ordinal: 0 } }]]);
  t.is(planBatch(copy(1), copying).steps.length, 0, 'chunk 1 again is skipped');
  t.is(planBatch(copy(2), copying).steps.length, 1, 'chunk 2 applies');
  t.false((planBatch(copy(2), copying).steps[0] as { replace: boolean }).replace, 'a later chunk adds to the table');
  t.is(planBatch(copy(2 ** 32 + 5), copying).steps.length, 1, 'a resumed run numbers its chunks higher: gaps are fine');
  t.true((planBatch(copy(7), states).steps[0] as { replace: boolean }).replace, 'the first chunk seen of a copy replaces the table');
  const resumed = { ...copy(2 ** 32), copy: { ...copy(2 ** 32).copy!, merge: true } };
  t.true((planBatch(resumed, states).steps[0] as { replace: boolean }).replace, 'a resumed copy whose start never arrived still starts afresh');
  t.true((planBatch(resumed, copying).steps[0] as { merge: boolean }).merge);

  // Batches applied together: each planned against the states the ones before it leave.
  const together = planBatches([copy(0), copy(1), copy(1), copy(2)], states);
  t.deepEqual(
    together.steps.map((step) => (step as { replace: boolean }).replace),
    [true, false, false],
    'the first replaces the table, the rest add to it, a chunk twice in the run applies once',
  );
  t.deepEqual(together.states.get(16384), { copyLsn: 20n, copyChunk: 2, copyDone: false, applied: { lsn: 20n, ordinal: 0 } }, 'the state after the last');
  t.is(planBatches([copy(1), copy(2)], copying).steps.length, 1, 'what was applied before is skipped');
});

test('a quarantined table takes no changes and no chunk of its copy or a resumed one; only a fresh copy, which releases it', (t) => {
  const change = (lsn: bigint, id: string) => ({ op: 'insert' as const, relation: 0, version: { lsn, ordinal: 1 }, row: [id, 'x'] });
  const quarantine = { error: 'refused', since: '2026-12-02T00:00:00Z' };
  const states = new Map([[16384, { copyLsn: 20n, copyChunk: 3, copyDone: false, applied: { lsn: 30n, ordinal: 1 }, quarantine }]]);
  const changes: Batch = {
    pipeline: 'p',
    partition: 0,
    epoch: 1,
    seq: 1,
    relations: [relation],
    changes: [change(31n, '1'), { op: 'truncate', relations: [0], version: { lsn: 32n, ordinal: 1 }, cascade: false, restartIdentity: false }],
  };
  t.deepEqual(planBatch(changes, states), { steps: [], states: new Map() }, 'changes and truncates are skipped');
  const copy = (snapshotLsn: bigint, chunk: number, merge = false): Batch => ({
    ...changes,
    changes: [],
    copy: { relation: 0, snapshotLsn, chunk, last: false, rows: 1, bytes: 4, id: 'c', copyText: [Buffer.from('9,y\n')], merge },
  });
  t.deepEqual(planBatch(copy(20n, 4), states).steps, [], 'the rest of the copy it was quarantined in');
  t.deepEqual(planBatch(copy(40n, 2 ** 32, true), states).steps, [], 'a resumed copy (its rows would add to a table that missed changes)');
  const fresh = planBatch(copy(40n, 0), states);
  t.true((fresh.steps[0] as { replace: boolean }).replace, 'a fresh copy replaces the table');
  t.deepEqual(fresh.states.get(16384), { copyLsn: 40n, copyChunk: 0, copyDone: false, applied: { lsn: 40n, ordinal: 0 } }, 'and releases it');
});

test('the ack tracker releases transactions only in commit order and only when every destination applied them', (t) => {
  const tracker = new AckTracker(7);
  tracker.begin();
  tracker.touch(0, 1);
  tracker.commit(100n);
  tracker.begin();
  tracker.touch(1, 1);
  tracker.commit(200n);
  const marks = (a: [number, number][], b: [number, number][]) =>
    new Map([
      ['a', new Map(a.map(([partition, seq]) => [partition, { epoch: 7, seq }]))],
      ['b', new Map(b.map(([partition, seq]) => [partition, { epoch: 7, seq }]))],
    ]);
  t.deepEqual(tracker.advance(marks([[1, 1]], [[1, 1]])), { ackLsn: undefined, copyConfirmed: false }, 'the later transaction alone is not enough');
  t.deepEqual(
    tracker.advance(
      marks(
        [
          [0, 1],
          [1, 1],
        ],
        [[1, 1]],
      ),
    ),
    { ackLsn: undefined, copyConfirmed: false },
    'one destination behind holds it',
  );
  t.deepEqual(
    tracker.advance(
      marks(
        [
          [0, 1],
          [1, 1],
        ],
        [
          [0, 1],
          [1, 1],
        ],
      ),
    ),
    { ackLsn: 200n, copyConfirmed: false },
  );
  t.true(tracker.isIdle);
  tracker.begin();
  tracker.touch(0, 2);
  tracker.commit(300n);
  const stale = new Map([['a', new Map([[0, { epoch: 6, seq: 99 }]])]]);
  t.is(tracker.advance(stale).ackLsn, undefined, 'marks from an earlier producer run do not count');
});

test('transactions committed into batches the one before waits for share its entry; any other batch, a held change or a copy takes one of its own', (t) => {
  const tracker = new AckTracker(1);
  const transaction = (endLsn: bigint, batches: [number, number][]) => {
    tracker.begin();
    for (const [partition, seq] of batches) tracker.touch(partition, seq);
    tracker.commit(endLsn);
  };
  const applied = (batches: [number, number][]) => new Map([['d', new Map(batches.map(([partition, seq]) => [partition, { epoch: 1, seq }]))]]);
  transaction(100n, [
    [0, 1],
    [1, 1],
  ]);
  transaction(110n, [[1, 1]]);
  transaction(120n, []);
  transaction(130n, [[0, 2]]);
  t.is(tracker.pendingTransactions, 4);
  t.deepEqual(
    tracker.advance(
      applied([
        [0, 1],
        [1, 1],
      ]),
    ),
    { ackLsn: 120n, copyConfirmed: false },
    'the batches of the first hold the next two: acknowledged with it',
  );
  t.is(tracker.pendingTransactions, 1, 'the one in a later batch waits');
  tracker.begin();
  tracker.touch(0, 2);
  const held = tracker.hold();
  tracker.commit(140n);
  t.is(tracker.advance(applied([[0, 2]])).ackLsn, 130n, 'a transaction with a held change is not joined');
  tracker.begin();
  tracker.touch(0, 2);
  tracker.commit(150n, true);
  t.is(tracker.pendingTransactions, 2);
  tracker.release(held);
  t.deepEqual(tracker.advance(applied([[0, 2]])), { ackLsn: 150n, copyConfirmed: true }, 'a copy is not joined either: it is confirmed');
  t.true(tracker.isIdle);
  t.is(tracker.pendingTransactions, 0);
});

test('the timer sends every batch holding a committed change; a transaction still arriving fills whole batches, sent on its commit or once reading pauses', (t) => {
  const sent: { seq: number; changes: number }[] = [];
  const batcher = new Batcher('p', 1, 1, { maxChanges: 3, maxBytes: 1 << 20 }, new Sequencer(1), (batch) =>
    sent.push({ seq: batch.seq, changes: decodeBatch(encodeBatch(batch)).changes.length }),
  );
  batcher.setRelation(relation);
  const images = rowImages('insert', ['1', 'x'], undefined);
  const transaction = (changes: number, commit: boolean) => {
    batcher.beginTransaction();
    for (let ordinal = 1; ordinal <= changes; ordinal++) batcher.addRow('insert', relation.oid, 10n, ordinal, images, 0, images.length);
    if (commit) batcher.endTransaction();
  };
  transaction(1, true);
  transaction(1, false);
  batcher.flushAll(true);
  t.deepEqual(sent, [{ seq: 1, changes: 2 }], 'the batch holding a committed change goes, with the start of the next transaction');
  batcher.addRow('insert', relation.oid, 10n, 2, images, 0, images.length);
  batcher.flushAll(true);
  t.deepEqual(sent.slice(1), [], 'a batch opened in the transaction still arriving waits');
  for (let ordinal = 3; ordinal <= 5; ordinal++) batcher.addRow('insert', relation.oid, 10n, ordinal, images, 0, images.length);
  t.deepEqual(sent.slice(1), [{ seq: 2, changes: 3 }], 'until it is full');
  batcher.flushAll(false);
  t.deepEqual(sent.slice(2), [{ seq: 3, changes: 1 }], 'or reading pauses');
  batcher.addRow('insert', relation.oid, 10n, 6, images, 0, images.length);
  batcher.endTransaction();
  batcher.flushAll(true);
  t.deepEqual(sent.slice(3), [{ seq: 4, changes: 1 }], 'or it commits');
});

test('partitioning is stable, JSON values are exact, numeric precision decodes, URLs are redacted', (t) => {
  t.is(partitionOf(16384, 8), partitionOf(16384, 8));
  t.true(partitionOf(16384, 8) < 8);
  t.is(jsonFragment('9007199254740993', PgType.int8), '9007199254740993');
  t.is(jsonFragment('12.3400', PgType.numeric), '12.3400');
  t.is(jsonFragment('NaN', PgType.numeric), '"NaN"');
  t.is(jsonFragment('t', PgType.bool), 'true');
  t.is(jsonFragment('{"a": [1]}', PgType.jsonb), '{"a": [1]}');
  t.is(jsonFragment('x"y', PgType.text), '"x\\"y"');
  t.is(jsonFragment(null, PgType.text), 'null');
  t.deepEqual(numericPrecision(((12 << 16) | 2) + 4), { precision: 12, scale: 2 });
  t.is(numericPrecision(-1), undefined);
  // Postgres 15: a scale below zero or above the precision.
  t.deepEqual(numericPrecision(((5 << 16) | (-2 & 0x7ff)) + 4), { precision: 5, scale: -2 });
  t.deepEqual(numericPrecision(((2 << 16) | 5) + 4), { precision: 2, scale: 5 });
  t.is(redact('connect postgres://user:secret@host/db failed'), 'connect postgres://user:***@host/db failed');
});

function u16(value: number): Buffer {
  const buffer = Buffer.alloc(2);
  buffer.writeUInt16BE(value);
  return buffer;
}
function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value);
  return buffer;
}
function u64(value: bigint): Buffer {
  const buffer = Buffer.alloc(8);
  buffer.writeBigUInt64BE(value);
  return buffer;
}

test('the replication stream reader gathers messages and headers split across reads, and hands pg the rest', async (t) => {
  const message = (type: string, body: Buffer) => Buffer.concat([Buffer.from(type), u32(body.length + 4), body]);
  const xlog = (walEnd: bigint, payload: string) => message('d', Buffer.concat([Buffer.from('w'), u64(1n), u64(walEnd), u64(0n), Buffer.from(payload)]));
  const keepalive = (walEnd: bigint, reply: boolean) => message('d', Buffer.concat([Buffer.from('k'), u64(walEnd), u64(0n), Buffer.from([reply ? 1 : 0])]));
  const payloads = ['first', 'x'.repeat(70_000), '', 'last é'];
  const wire = Buffer.concat([
    message('W', Buffer.from([0, 0, 0])),
    xlog(10n, payloads[0]),
    message('N', Buffer.from('a notice')),
    xlog(20n, payloads[1]),
    keepalive(25n, true),
    xlog(30n, payloads[2]),
    xlog(40n, payloads[3]),
    message('c', Buffer.alloc(0)),
    message('C', Buffer.from('COPY 0\0')),
  ]);
  for (const size of [1, 2, 3, 5, 7, 64, 4096, wire.length]) {
    const received: string[] = [];
    const socket = new EventEmitter() as EventEmitter & { pause(): void; resume(): void };
    socket.pause = () => {};
    socket.resume = () => {};
    const handedBack: Buffer[] = [];
    socket.on('data', (data: Buffer) => handedBack.push(Buffer.from(data)));
    const reader = new CopyBothReader('START_REPLICATION', {
      onData: (data, start, end) => received.push(data.toString('utf8', start, end)),
      onKeepalive: (walEnd, reply) => received.push(`keepalive ${walEnd} ${reply}`),
    });
    reader.submit({ stream: socket as never, query: () => {} });
    // Every read is a fresh buffer that the next read may overwrite: reuse one to make sure.
    const read = Buffer.alloc(size);
    for (let offset = 0; offset < wire.length; offset += size) {
      const piece = read.subarray(0, Math.min(size, wire.length - offset));
      wire.copy(piece, 0, offset, offset + piece.length);
      socket.emit('data', piece);
    }
    t.deepEqual(received, ['first', payloads[1], 'keepalive 25 true', '', 'last é'], `reads of ${size} bytes`);
    t.deepEqual(
      Buffer.concat(handedBack),
      Buffer.concat([message('c', Buffer.alloc(0)), message('C', Buffer.from('COPY 0\0'))]),
      `pg gets CopyDone and what follows (reads of ${size} bytes)`,
    );
  }
});

test('a run collapses straight from its images to the same final rows and deleted keys as from decoded values, at once or in slices', async (t) => {
  // Two key columns (so key changes and the key's byte form are both exercised), and one
  // column of integers (keys compared as numbers); values with quotes, commas, newlines, the
  // empty string, NULL and non-ASCII text.
  for (const keyColumns of [[0, 2], [0]]) await collapsesLikeDecoded(t, keyColumns);
  const update = (row: Value[]): RowChange => ({ op: 'update', relation: 0, version: { lsn: 1n, ordinal: 1 }, images: rowImages('update', row, undefined) });
  const long = collapseImagesToCsv([0], 2, [update(['1', 'x'.repeat(3000)]), update(['2', 'y'])])!;
  t.is(long.longestLine, long.csv.indexOf('\n') + 1, 'the longest line is known (CSV readers limit it)');
  t.is(collapseImagesToCsv([0], 2, [update(['1', UNCHANGED])]), undefined, 'an unchanged TOASTed value needs the stored row');
  t.is(collapseImagesToCsv([0], 3, [update(['1', 'x'])]), undefined, 'images of another width than the table');
  t.truthy(collapseImagesToCsv([0], 2, [update(['1', UNCHANGED]), update(['1', 'x'])]), 'unless a later image replaces it');
  const latin1 = Buffer.concat([Buffer.from('N'), Buffer.from([0, 2, 0x74, 0, 0, 0, 1, 0x31, 0x74, 0, 0, 0, 1, 0xe9])]);
  t.is(collapseImagesToCsv([0], 2, [{ op: 'insert', relation: 0, version: { lsn: 1n, ordinal: 1 }, images: latin1 }]), undefined, 'text that is not UTF-8');
  // A run of inserts only is written in order, without a lookup by key.
  const insert = (row: Value[], ordinal: number): RowChange => ({
    op: 'insert',
    relation: 0,
    version: { lsn: 1n, ordinal },
    row,
    images: rowImages('insert', row, undefined),
  });
  const inserts = [insert(['1', 'say "hi"'], 1), insert(['2', null], 2), insert(['3', 'two\nlines'], 3)];
  t.deepEqual(parseCsvRows(collapseImagesToCsv([0], 2, inserts)!.csv.toString(), PLAIN_CSV), [...collapseByKey([0], inserts).rows.map((row) => [...row, 'f'])]);
});

test("the key index keeps each key's last value in first-seen order, integers and texts, across its growth and from run to run", (t) => {
  const index = new KeyIndex();
  let seed = 11;
  const random = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  for (const size of [200_000, 50, 70_000]) {
    const expected = new Map<number | string, number>();
    for (let value = 0; value < size; value++) {
      const pick = random(10);
      const key = pick === 0 ? `t${random(size)}` : pick === 1 ? -random(size) : pick === 2 ? 2 ** 40 + random(size) * 2 ** 33 : random(size);
      index.set(key, value);
      expected.set(key, value);
    }
    const integers = [...expected].filter(([key]) => typeof key === 'number').map(([, value]) => value);
    const texts = [...expected].filter(([key]) => typeof key === 'string').map(([, value]) => value);
    t.deepEqual(index.take(), [...integers, ...texts], `${size} values`);
  }
  t.deepEqual(index.take(), [], 'nothing is left after a take');
});

test('a one-column key written as an integer is compared as a number, and no two key texts are taken for one', (t) => {
  const at = (text: string) => {
    const images = rowImages('insert', [text, 'v'], undefined);
    return tupleKey(images, newTupleAt(images, 'insert'), [0]);
  };
  t.is(at('42'), 42);
  t.is(at('-42'), -42);
  t.is(at('0'), 0);
  t.is(at('123456789012345'), 123456789012345);
  // Texts no number stands for exactly stay strings: a leading zero, "-0", 16 digits, not digits.
  for (const text of ['042', '-0', '00', '1234567890123456', '4.2', '1e3', '-', '', ' 7', 'abc']) t.is(at(text), text, text);
  // Keys that would meet if parsed loosely stay apart when a run is collapsed.
  const version = { lsn: 1n, ordinal: 1 };
  const texts = ['7', '07', '0', '-0', '9007199254740993', '9007199254740992'];
  const changes: RowChange[] = texts.map((key) => ({
    op: 'insert',
    relation: 0,
    version,
    row: [key, key],
    images: rowImages('insert', [key, key], undefined),
  }));
  const updated = ['7', 'seven'];
  changes.push({ op: 'update', relation: 0, version, row: updated, images: rowImages('update', updated, undefined) });
  changes.push({ op: 'delete', relation: 0, version, old: ['0', null], images: rowImages('delete', undefined, ['0', null]) });
  const lines = parseCsvRows(collapseImagesToCsv([0], 2, changes)!.csv.toString(), PLAIN_CSV);
  const expected = collapseByKey([0], changes);
  const sorted = (rows: Value[][]) => rows.map((row) => JSON.stringify(row)).sort();
  t.deepEqual(sorted(lines.filter((line) => line[2] === 'f').map((line) => line.slice(0, 2))), sorted(expected.rows));
  t.deepEqual(sorted(lines.filter((line) => line[2] === 't').map((line) => [line[0]])), sorted(expected.deletedKeys));
  t.is(expected.rows.length, 5);
});

test('the tests take Postgres and Redis from the URL given, else from containers when Docker answers, else from local binaries, else say what to install', (t) => {
  const none = { dockerAnswers: false };
  t.deepEqual(chooseSource('postgres', { ...none, url: 'postgres://x/y', dockerAnswers: true, binaries: '/bin' }), { kind: 'url', url: 'postgres://x/y' });
  t.deepEqual(chooseSource('redis', { dockerAnswers: true, binaries: '/usr/bin/redis-server' }), { kind: 'containers' });
  t.deepEqual(chooseSource('postgres', { dockerAnswers: false, binaries: '/usr/lib/postgresql/17/bin' }), {
    kind: 'binaries',
    path: '/usr/lib/postgresql/17/bin',
  });
  t.deepEqual(chooseSource('postgres', { dockerAnswers: true, binaries: '/opt/pg/bin', forced: 'binaries' }), { kind: 'binaries', path: '/opt/pg/bin' });
  t.throws(() => chooseSource('postgres', { ...none, forced: 'containers', binaries: '/opt/pg/bin' }), { message: /no Docker engine answers/ });
  t.throws(() => chooseSource('redis', { ...none, forced: 'vm' }), { message: /PGR_TEST_SERVICES=vm: give containers or binaries/ });
  t.throws(() => chooseSource('postgres', none), { message: /set PG_URL, start a Docker engine .* or install Postgres server binaries/ });
  t.throws(() => chooseSource('redis', none), { message: /set REDIS_URL, start a Docker engine .* or install redis-server/ });
});

test("DuckDB's sizes are read in its units, binary and decimal", (t) => {
  t.is(parseSize('18.8 GiB'), 18.8 * 2 ** 30);
  t.is(parseSize('128.0 MiB'), 128 * 2 ** 20);
  t.is(parseSize('1.5GB'), 1.5e9);
  t.is(parseSize('512 B'), 512);
  t.throws(() => parseSize('lots'), { message: /not a size/ });
});

/** collapseImagesToCsv against collapseByKey on 200 random runs of changes to a table of three columns keyed by `keyColumns`. */
async function collapsesLikeDecoded(t: ExecutionContext, keyColumns: number[]): Promise<void> {
  const texts = ['plain', 'a,b', 'say "hi"', 'two\nlines', '', 'é ü', null];
  let seed = 7;
  const random = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  for (let run = 0; run < 200; run++) {
    const present = new Map<string, Value[]>();
    const changes: RowChange[] = [];
    for (let index = 0; index < 1 + random(40); index++) {
      const version = { lsn: 1n, ordinal: index };
      const key = [String(random(6)), String(random(2))];
      const keyOf = (values: Value[]) => keyColumns.map((column) => values[column]).join('/');
      const row: Value[] = [key[0], texts[random(texts.length)], key[1]];
      const existing = [...present.values()][random(present.size + 1)];
      if (!existing || present.has(keyOf(row))) {
        if (present.has(keyOf(row))) continue;
        present.set(keyOf(row), row);
        changes.push({ op: 'insert', relation: 0, version, row, images: rowImages('insert', row, undefined) });
      } else if (random(3) === 0) {
        present.delete(keyOf(existing));
        const old = [existing[0], null, keyColumns.includes(2) ? existing[2] : null];
        changes.push({ op: 'delete', relation: 0, version, old, images: rowImages('delete', undefined, old) });
      } else {
        // An update, half of them to a new key (Postgres then sends the old key).
        const updated: Value[] = random(2) === 0 && !present.has(keyOf(row)) ? row : [existing[0], texts[random(texts.length)], existing[2]];
        const old = keyOf(updated) === keyOf(existing) ? undefined : [existing[0], null, keyColumns.includes(2) ? existing[2] : null];
        present.delete(keyOf(existing));
        present.set(keyOf(updated), updated);
        changes.push({ op: 'update', relation: 0, version, row: updated, ...(old ? { old } : {}), images: rowImages('update', updated, old) });
      }
    }
    const expected = collapseByKey(keyColumns, changes);
    const { csv } = collapseImagesToCsv(keyColumns, 3, changes)!;
    // In slices of 3 lines, the event loop turning between them: the same bytes.
    t.deepEqual((await collapseImagesToCsvAside(keyColumns, 3, changes, 3))?.csv, csv);
    // The same run as a consumer reads it from a batch: images read in place in the records.
    const batch: Batch = { pipeline: 'p', partition: 0, epoch: 1, seq: 1, relations: [relation], changes };
    t.deepEqual(collapseImagesToCsv(keyColumns, 3, decodeBatch(JSON.parse(JSON.stringify(encodeBatch(outgoing(batch))))).changes as RowChange[])?.csv, csv);
    const lines = parseCsvRows(csv.toString(), PLAIN_CSV);
    const sorted = (rows: Value[][]) => rows.map((row) => JSON.stringify(row)).sort();
    t.deepEqual(sorted(lines.filter((line) => line[3] === 'f').map((line) => line.slice(0, 3))), sorted(expected.rows));
    t.deepEqual(sorted(lines.filter((line) => line[3] === 't').map((line) => keyColumns.map((column) => line[column]))), sorted(expected.deletedKeys));
  }
}
