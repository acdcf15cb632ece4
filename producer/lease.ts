import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { errorMessage, UserError } from '../shared/errors.js';
import { keys } from '../shared/keys.js';
import { log } from '../shared/log.js';

/** A lease not renewed for this long is free: its producer is gone. */
const LEASE_TTL_MS = 10_000;
const RENEW_MS = 2_000;

interface Holder {
  token: string;
  host: string;
  pid: number;
  since: string;
  renewed: number;
}

/** Renews our lease, or takes it again if Redis lost it; 0 when another producer holds it. */
const RENEW = `
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held).token ~= ARGV[1] then return held end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1`;

/** Deletes the lease if it is still ours. */
const RELEASE = `
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held).token == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1`;

/**
 * One producer per pipeline: a lease in Redis, renewed every 2 s. A second producer (even with
 * another slot, which would hold WAL of its own) finds it renewed and exits 2 naming the first;
 * a lease left by a producer that died is taken at once on the same host (its pid is gone)
 * and after 10 s from another host.
 */
export class ProducerLease {
  private readonly token = randomUUID();
  private readonly since = new Date().toISOString();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly redis: Redis,
    private readonly pipeline: string,
  ) {}

  private get key(): string {
    return keys.producerLease(this.pipeline);
  }

  private value(): string {
    return JSON.stringify({ token: this.token, host: hostname(), pid: process.pid, since: this.since, renewed: Date.now() } satisfies Holder);
  }

  /** Takes the lease, waiting out one whose producer stopped renewing it; `onLost` runs if another producer takes it later. */
  async acquire(signal: AbortSignal, onLost: (error: UserError) => void): Promise<void> {
    let watching: { text: string; since: number } | undefined;
    while (!signal.aborted) {
      if (await this.redis.set(this.key, this.value(), 'PX', LEASE_TTL_MS, 'NX')) break;
      const text = await this.redis.get(this.key);
      if (!text) continue;
      const holder = JSON.parse(text) as Holder;
      if (holder.host === hostname() && (holder.pid === process.pid || !processExists(holder.pid))) {
        log.info({ holderPid: holder.pid }, 'taking over the lease of a producer on this host that is gone');
        await this.redis.eval(RELEASE, 1, this.key, holder.token);
        continue;
      }
      if (watching && watching.text !== text) throw running(this.pipeline, holder);
      if (!watching) {
        watching = { text, since: Date.now() };
        log.info(
          { holderHost: holder.host, holderPid: holder.pid },
          "the pipeline's producer lease is held: waiting to see whether its producer is alive (it renews the lease every 2 s)",
        );
      }
      await sleep(250, undefined, { signal }).catch(() => {});
    }
    this.timer = setInterval(() => void this.renew(onLost), RENEW_MS);
    this.timer.unref();
  }

  private async renew(onLost: (error: UserError) => void): Promise<void> {
    try {
      const result = await this.redis.eval(RENEW, 1, this.key, this.token, this.value(), LEASE_TTL_MS);
      if (result === 1) return;
      const holder = JSON.parse(String(result)) as Holder;
      if (holder.host === hostname() && !processExists(holder.pid)) {
        // A Redis gone back in time (restored from a snapshot, or a failover that lost the
        // newest writes) shows the lease of a producer of this host that has since died, the
        // one this producer took over: it is ours again.
        log.info({ holderPid: holder.pid }, 'Redis showed the lease of a producer on this host that is gone: taken back');
        await this.redis.eval(RELEASE, 1, this.key, holder.token);
        return;
      }
      this.stopRenewing();
      onLost(running(this.pipeline, holder, 'took over'));
    } catch (error) {
      // Redis unreachable: the producer notices on its own; the next renewal tries again.
      log.debug({ err: errorMessage(error) }, 'producer lease renewal failed');
    }
  }

  private stopRenewing(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  async release(): Promise<void> {
    if (!this.timer) return;
    this.stopRenewing();
    await this.redis.eval(RELEASE, 1, this.key, this.token).catch(() => {});
  }
}

function running(pipeline: string, holder: Holder, verb = 'is running'): UserError {
  return new UserError(
    `Another producer ${verb} pipeline ${pipeline}: pid ${holder.pid} on host ${holder.host} (since ${holder.since}). A pipeline has one producer: stop that one first, or give this one another --pipeline.`,
  );
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
