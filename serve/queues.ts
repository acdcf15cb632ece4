import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { PipelineStatus } from '../cli/status.js';
import { QUEUE_PREFIX, queueName } from '../shared/keys.js';
import { heardQueue } from '../shared/redis.js';

/**
 * Every destination partition's queue in bull-board, under /queues. Read-only unless the
 * server runs with --queues-admin: retrying or removing a job by hand can break a partition's
 * order, which the consumers rely on.
 */
export class QueueBoard {
  private readonly adapter = new FastifyAdapter();
  private readonly board;
  private queues = new Map<string, Queue>();

  constructor(
    private readonly redis: Redis,
    private readonly admin: boolean,
  ) {
    this.adapter.setBasePath('/queues');
    this.board = createBullBoard({ queues: [], serverAdapter: this.adapter, options: { uiConfig: { boardTitle: 'pg-replicate queues' } } });
  }

  plugin() {
    return this.adapter.registerPlugin();
  }

  /** Shows the queues of these pipelines' destinations (when the set changed). */
  async show(pipelines: PipelineStatus[]): Promise<void> {
    const names = pipelines.flatMap((status) =>
      status.destinations
        .filter((destination) => destination.state !== 'detached')
        .flatMap((destination) => Array.from({ length: status.partitions }, (_, partition) => queueName(status.pipeline, destination.name, partition))),
    );
    if (names.length === this.queues.size && names.every((name) => this.queues.has(name))) return;
    const next = new Map(names.map((name) => [name, this.queues.get(name) ?? heardQueue(new Queue(name, { connection: this.redis, prefix: QUEUE_PREFIX }))]));
    for (const [name, queue] of this.queues) if (!next.has(name)) await queue.close();
    this.queues = next;
    this.board.replaceQueues([...next.values()].map((queue) => new BullMQAdapter(queue, { readOnlyMode: !this.admin })));
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((queue) => queue.close()));
  }
}
