import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { Queue } from 'bullmq';
import { register } from 'prom-client';
import { pipelineStatus } from '../cli/status.js';
import type { Destination, Step, TableState } from '../consumers/destination.js';
import { ConsumerRunner } from '../consumers/runner.js';
import { BatchQueues } from '../producer/queues.js';
import { encodeBatch, outgoing } from '../shared/codec.js';
import type { Batch, Relation } from '../shared/events.js';
import { keys, QUEUE_PREFIX, queueName } from '../shared/keys.js';
import { readApplied, recordApplied, writePipelineState } from '../shared/redis.js';
import { waitFor } from './support/pipeline.js';
import { type RedisServer, startRedis } from './support/services.js';

let redis: RedisServer;
test.before(async () => {
  redis = await startRedis();
});
test.after.always(async () => {
  await redis?.stop();
});

const relation: Relation = {
  oid: 1,
  schema: 'public',
  name: 't',
  replicaIdentity: 'default',
  columns: [{ name: 'id', typeOid: 23, typeModifier: -1, isKey: true }],
};

/** A destination that remembers what it applied, and fails a chosen batch a number of times first. */
class FlakyDestination implements Destination {
  readonly applied: string[] = [];
  attempts = 0;
  constructor(
    private readonly failing: string,
    private failuresLeft: number,
  ) {}
  async tableStates(): Promise<Map<number, TableState>> {
    return new Map();
  }
  async apply(steps: Step[]): Promise<void> {
    const id = steps.map((step) => (step.kind === 'changes' ? step.changes.map((change) => change.row![0]).join() : '')).join();
    if (id === this.failing) {
      this.attempts++;
      if (this.failuresLeft-- > 0) throw new Error(`cannot apply ${id} yet`);
    }
    this.applied.push(id);
  }
  async close(): Promise<void> {}
}

function batch(pipeline: string, partition: number, seq: number): Batch {
  return {
    pipeline,
    partition,
    epoch: 1,
    seq,
    relations: [relation],
    changes: [{ op: 'insert', relation: 0, version: { lsn: BigInt(seq), ordinal: 1 }, row: [`${partition}-${seq}`] }],
  };
}

async function setup(pipeline: string, destination: string) {
  await writePipelineState(redis.client, pipeline, { slot: 's', publication: 'p', partitions: 2, destinations: [destination], epoch: 1 });
  const queues = await BatchQueues.open(redis.client, pipeline, [destination], 2);
  await queues.limitToOneWorker();
  for (let seq = 1; seq <= 10; seq++) for (const partition of [0, 1]) queues.enqueue(outgoing(batch(pipeline, partition, seq)));
  await queues.settle();
  return queues;
}

const runnerOptions = (pipeline: string, name: string) => ({
  redisUrl: redis.url,
  pipeline,
  name,
  lockDurationMs: 2000,
  stalledIntervalMs: 500,
  attemptsBeforePark: 2,
});

/** A consumer of the pipeline running with this destination until `stop()`. */
function startRunner(pipeline: string, name: string, destination: Destination): { stop: () => Promise<void> } {
  const runner = new ConsumerRunner(runnerOptions(pipeline, name), destination);
  const controller = new AbortController();
  const running = runner.run(controller.signal);
  return {
    stop: async () => {
      controller.abort();
      await running;
      await runner.close();
    },
  };
}

test('a failing batch is retried in place: its partition waits (reported parked), others go on, order is kept', async (t) => {
  const queues = await setup('flaky', 'parking');
  const destination = new FlakyDestination('0-3', 3);
  const runner = startRunner('flaky', 'parking', destination);
  try {
    const parked = await waitFor('the partition to be reported parked', async () => {
      const status = await pipelineStatus({ pipeline: 'flaky', redisUrl: redis.url });
      return status.destinations[0].state === 'parked' ? status : undefined;
    });
    t.regex(parked.destinations[0].errors[0].error, /cannot apply 0-3 yet/);
    t.is(parked.destinations[0].errors[0].partition, 0);
    t.regex(
      await register.getSingleMetricAsString('pg_replicate_partitions_failing'),
      /\{destination="parking",state="parked"\} 1$/m,
      'the metrics show it too',
    );
    await waitFor('partition 1 to finish while 0 waits', async () => destination.applied.includes('1-10'));
    t.false(destination.applied.includes('0-4'), 'nothing behind the failing batch ran');
    await waitFor('everything applied', async () => destination.applied.length === 20);
  } finally {
    await runner.stop();
    await queues.close();
  }
  t.is(destination.attempts, 4);
  for (const partition of [0, 1]) {
    t.deepEqual(
      destination.applied.filter((id) => id.startsWith(`${partition}-`)),
      Array.from({ length: 10 }, (_, i) => `${partition}-${i + 1}`),
    );
  }
  t.is(await redis.client.hget(keys.applied('flaky', 'parking'), '0'), '1:10');
  t.is((await pipelineStatus({ pipeline: 'flaky', redisUrl: redis.url })).destinations[0].state, 'ok');
  t.regex(await register.getSingleMetricAsString('pg_replicate_partitions_failing'), /\{destination="parking",state="parked"\} 0$/m);
  t.regex(await register.getSingleMetricAsString('pg_replicate_batch_failures_total'), /\{destination="parking"\} 3$/m);
  t.regex(await register.getSingleMetricAsString('pg_replicate_batches_applied_total'), /\{destination="parking"\} 20$/m);
});

test('stopping a consumer mid-retry puts the batch back at the front of its queue', async (t) => {
  const queues = await setup('stopping', 'd');
  const first = new FlakyDestination('0-2', 1000);
  const runner = startRunner('stopping', 'd', first);
  await waitFor('the batch to fail', async () => first.attempts > 0);
  await runner.stop();

  const second = new FlakyDestination('none', 0);
  const again = startRunner('stopping', 'd', second);
  try {
    await waitFor('the rest to be applied', async () => second.applied.filter((id) => id.startsWith('0-')).length === 9);
    await sleep(200);
  } finally {
    await again.stop();
    await queues.close();
  }
  t.deepEqual(
    first.applied.filter((id) => id.startsWith('0-')),
    ['0-1'],
  );
  t.deepEqual(
    second.applied.filter((id) => id.startsWith('0-')),
    Array.from({ length: 9 }, (_, i) => `0-${i + 2}`),
  );
});

test('a large batch travels as a chunk beside its job: applied whole, then released; re-delivered after its release, it is skipped', async (t) => {
  await writePipelineState(redis.client, 'large', { slot: 's', publication: 'p', partitions: 1, destinations: ['d'], epoch: 1 });
  const queues = await BatchQueues.open(redis.client, 'large', ['d'], 1);
  await queues.limitToOneWorker();
  const big: Batch = {
    ...batch('large', 0, 1),
    changes: Array.from({ length: 5000 }, (_, i) => ({
      op: 'insert' as const,
      relation: 0,
      version: { lsn: 1n, ordinal: i + 1 },
      row: [`row ${i} ${'x'.repeat(20)}`],
    })),
  };
  queues.enqueue(outgoing(big));
  await queues.settle();
  const [job] = await redis.client.keys('pgr:{large}:chunk:*');
  t.truthy(job, 'the records are a chunk in Redis');
  t.deepEqual(await redis.client.smembers(job.replace(':chunk:', ':chunk-for:')), ['d']);
  const destination = new FlakyDestination('none', 0);
  const runner = startRunner('large', 'd', destination);
  try {
    await waitFor('the batch to be applied', async () => destination.applied.length === 1);
    t.is(destination.applied[0].split(',').length, 5000, 'every change arrived');
    await waitFor('its chunk to be released', async () => (await redis.client.keys('pgr:{large}:chunk*')).length === 0);
    // As if its consumer had stopped after releasing it but before the queue heard: the same
    // batch again, its records gone. The applied mark shows it done; it is skipped, not parked.
    const id = job.slice('pgr:{large}:chunk:'.length);
    const queue = new Queue(queueName('large', 'd', 0), { connection: redis.client, prefix: QUEUE_PREFIX });
    await queue.add('batch', encodeBatch(outgoing(big), id), { jobId: `${id}-again`, removeOnComplete: true });
    await waitFor('the re-delivered batch to be completed', async () => {
      const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'failed');
      return Object.values(counts).every((count) => count === 0);
    });
    await queue.close();
    t.is(destination.applied.length, 1, 'not applied twice');
  } finally {
    await runner.stop();
    await queues.close();
  }
});

/**
 * A destination that keeps its tables' states like a real one, takes its time applying, and
 * notes which steps it was given to prepare ahead.
 */
class PreparingDestination implements Destination {
  readonly applied: { first: string; prepared: boolean }[] = [];
  readonly states = new Map<number, TableState>();
  private readonly prepared = new WeakSet<object>();
  /** After applying the batch starting with this row, the table's version jumps to this one. */
  jump?: { after: string; to: TableState['applied'] };

  async tableStates(relations: Relation[]): Promise<Map<number, TableState>> {
    return new Map(relations.flatMap(({ oid }) => (this.states.has(oid) ? [[oid, { ...this.states.get(oid)! }] as const] : [])));
  }
  /** Called when the next batch is prepared. */
  private onPrepare = () => {};
  prepare(steps: Step[]): void {
    for (const step of steps) if (step.kind === 'changes') this.prepared.add(step.changes);
    this.onPrepare();
  }
  async apply(steps: Step[], states: Map<number, TableState>): Promise<void> {
    // A slow apply: it ends once the next batch is prepared (at most 5 s: the last has none), whatever the machine's speed.
    await Promise.race([new Promise<void>((resolve) => (this.onPrepare = resolve)), sleep(5_000)]);
    const changes = steps.flatMap((step) => (step.kind === 'changes' ? [step.changes] : []));
    const first = String(changes[0]?.[0]?.row?.[0]);
    this.applied.push({ first, prepared: changes.length > 0 && changes.every((run) => this.prepared.has(run)) });
    for (const [oid, state] of states) this.states.set(oid, state);
    if (this.jump?.after === first) this.states.set(relation.oid, { ...this.states.get(relation.oid)!, applied: this.jump.to });
  }
  async close(): Promise<void> {}
}

test('the next batch of a large transaction is planned and prepared while one is applied; a plan made on states that did not come true is made again', async (t) => {
  await writePipelineState(redis.client, 'ahead', { slot: 's', publication: 'p', partitions: 1, destinations: ['d'], epoch: 1 });
  const queues = await BatchQueues.open(redis.client, 'ahead', ['d'], 1);
  await queues.limitToOneWorker();
  // Six batches of 5,000 changes (records as chunks), batch k at LSN k.
  const large = (seq: number): Batch => ({
    ...batch('ahead', 0, seq),
    changes: Array.from({ length: 5000 }, (_, i) => ({
      op: 'insert' as const,
      relation: 0,
      version: { lsn: BigInt(seq), ordinal: i + 1 },
      row: [`${seq}:${i} ${'x'.repeat(20)}`],
    })),
  });
  for (let seq = 1; seq <= 6; seq++) queues.enqueue(outgoing(large(seq)));
  await queues.settle();
  const destination = new PreparingDestination();
  // After batch 3, the table's version is batch 4's last change (as if batch 4 were applied
  // already): batch 4, planned ahead on batch 3's version, must be planned again, to nothing.
  destination.jump = { after: `3:0 ${'x'.repeat(20)}`, to: { lsn: 4n, ordinal: 5000 } };
  const runner = startRunner('ahead', 'd', destination);
  try {
    await waitFor('batches 1–3, 5 and 6 to be applied', async () => destination.applied.length === 5);
    await waitFor('every job to complete', async () => (await redis.client.hget(keys.applied('ahead', 'd'), '0')) === '1:6');
  } finally {
    await runner.stop();
    await queues.close();
  }
  t.deepEqual(
    destination.applied.map(({ first }) => first.split(':')[0]),
    ['1', '2', '3', '5', '6'],
    'in order, and batch 4 not at all',
  );
  t.deepEqual(
    destination.applied.map(({ prepared }) => prepared),
    [false, true, true, false, true],
    'each prepared during the apply before it (batch 5 followed one with nothing to apply)',
  );
  t.deepEqual(destination.states.get(relation.oid)?.applied, { lsn: 6n, ordinal: 5000 });
});

test('an applied mark only moves forward: batches applied together with an earlier one complete after their mark', async (t) => {
  const marks = () => readApplied(redis.client, 'marks', 'd');
  await recordApplied(redis.client, 'marks', 'd', 0, { epoch: 2, seq: 10 });
  await recordApplied(redis.client, 'marks', 'd', 0, { epoch: 2, seq: 4 });
  await recordApplied(redis.client, 'marks', 'd', 0, { epoch: 1, seq: 99 });
  t.deepEqual((await marks()).get(0), { epoch: 2, seq: 10 }, 'an earlier batch, or one of an earlier producer run, leaves it');
  await recordApplied(redis.client, 'marks', 'd', 0, { epoch: 2, seq: 11 });
  await recordApplied(redis.client, 'marks', 'd', 1, { epoch: 2, seq: 1 });
  t.deepEqual((await marks()).get(0), { epoch: 2, seq: 11 });
  await recordApplied(redis.client, 'marks', 'd', 0, { epoch: 3, seq: 1 });
  t.deepEqual(
    await marks(),
    new Map([
      [0, { epoch: 3, seq: 1 }],
      [1, { epoch: 2, seq: 1 }],
    ]),
    'a new run moves it on; partitions are apart',
  );
  await redis.client.hset(keys.applied('marks', 'd'), '2', 'not a mark');
  await recordApplied(redis.client, 'marks', 'd', 2, { epoch: 3, seq: 5 });
  t.deepEqual((await marks()).get(2), { epoch: 3, seq: 5 }, 'what is not a mark is replaced');
});

test('a copy chunk Redis lost waits while its run is current, and is dropped once a new producer run (which copies again) starts', async (t) => {
  await writePipelineState(redis.client, 'lostcopy', { slot: 's', publication: 'p', partitions: 1, destinations: ['d'], epoch: 1 });
  const queues = await BatchQueues.open(redis.client, 'lostcopy', ['d'], 1);
  await queues.limitToOneWorker();
  // The job survived (a consumer held it) but its rows did not.
  const lostCopy: Batch = {
    ...batch('lostcopy', 0, 1),
    changes: [],
    copy: { relation: 0, id: '1.0.1', rows: 10, bytes: 100, snapshotLsn: 5n, chunk: 1, last: false },
  };
  queues.enqueue(outgoing(lostCopy));
  await queues.settle();
  // The next producer run's first batch, as that run sends it (its own numbering).
  const nextRun = await BatchQueues.open(redis.client, 'lostcopy', ['d'], 1);
  nextRun.enqueue(outgoing({ ...batch('lostcopy', 0, 1), epoch: 2 }));
  await nextRun.settle();
  await nextRun.close();
  const destination = new FlakyDestination('none', 0);
  const runner = startRunner('lostcopy', 'd', destination);
  try {
    await waitFor('the copy chunk to fail', async () =>
      (await redis.client.hget(keys.health('lostcopy', 'd'), '0'))?.includes('chunk 1.0.1 of this batch is missing from Redis'),
    );
    t.deepEqual(destination.applied, [], 'nothing behind it is applied meanwhile');
    await writePipelineState(redis.client, 'lostcopy', { epoch: 2 });
    await waitFor("the new run's batch to be applied", async () => destination.applied.length === 1);
    t.deepEqual(destination.applied, ['0-1'], "the lost copy chunk was dropped, the new run's batch applied");
    await waitFor('every job to complete', async () => (await redis.client.hget(keys.applied('lostcopy', 'd'), '0')) === '2:1');
  } finally {
    await runner.stop();
    await queues.close();
  }
});

test("a gap in a partition's batches (Redis lost some) is never applied past: it is reported to the producer, and the next producer run's batches are applied", async (t) => {
  const queues = await setup('gap', 'd');
  // Redis lost batch 4 of partition 0 (a failover to a replica that had not received it).
  const queue = new Queue(queueName('gap', 'd', 0), { connection: redis.client, prefix: QUEUE_PREFIX });
  const lost = (await queue.getJobs(['wait'])).find((job) => job.data.s === 4)!;
  await lost.remove();
  const destination = new FlakyDestination('none', 0);
  const runner = startRunner('gap', 'd', destination);
  try {
    await waitFor('the gap to be found', async () =>
      (await redis.client.hget(keys.health('gap', 'd'), '0'))?.includes('batches 4–4 of partition 0 are missing from Redis'),
    );
    await waitFor('partition 1 to be applied meanwhile', async () => destination.applied.includes('1-10'));
    t.deepEqual(
      destination.applied.filter((id) => id.startsWith('0-')),
      ['0-1', '0-2', '0-3'],
      'nothing past the gap',
    );
    t.is(await redis.client.hget(keys.applied('gap', 'd'), '0'), '1:3', 'the mark stays before the gap: the slot cannot pass it');
    t.like(JSON.parse((await redis.client.hget(keys.state('gap'), 'gap'))!), {
      epoch: 1,
      destination: 'd',
      partition: 0,
      applied: 3,
      missing: [4, 4],
      found: 5,
    });
    // The producer re-reads from the slot in a new run, whose batches replace the ones behind the gap.
    await writePipelineState(redis.client, 'gap', { epoch: 2 });
    const nextRun = await BatchQueues.open(redis.client, 'gap', ['d'], 2);
    for (const seq of [1, 2])
      nextRun.enqueue(
        outgoing({
          ...batch('gap', 0, seq),
          epoch: 2,
          changes: [{ op: 'insert', relation: 0, version: { lsn: BigInt(seq), ordinal: 2 }, row: [`0-new${seq}`] }],
        }),
      );
    await nextRun.settle();
    await nextRun.close();
    await waitFor("the new run's batches to be applied", async () => destination.applied.includes('0-new2'));
  } finally {
    await runner.stop();
    await queues.close();
    await queue.close();
  }
  t.deepEqual(
    destination.applied.filter((id) => id.startsWith('0-')),
    ['0-1', '0-2', '0-3', '0-new1', '0-new2'],
    "the ended run's batches behind the gap were skipped",
  );
  t.is(await redis.client.hget(keys.applied('gap', 'd'), '0'), '2:2');
});

test('a batch found applied by the mark (its consumer stopped before the job completed) completes without being applied again', async (t) => {
  const queues = await setup('redelivered', 'd');
  await recordApplied(redis.client, 'redelivered', 'd', 0, { epoch: 1, seq: 2 });
  const destination = new FlakyDestination('none', 0);
  const runner = startRunner('redelivered', 'd', destination);
  try {
    await waitFor('everything to be applied', async () => destination.applied.length === 18);
  } finally {
    await runner.stop();
    await queues.close();
  }
  t.deepEqual(
    destination.applied.filter((id) => id.startsWith('0-')),
    Array.from({ length: 8 }, (_, i) => `0-${i + 3}`),
  );
  t.is(await redis.client.hget(keys.health('redelivered', 'd'), '0'), null, 'no gap reported');
});
