import { Redis, type RedisOptions } from 'ioredis';
import { redact, UserError } from './errors.js';

/**
 * Where Redis is: one server (`redis://`, `rediss://` with TLS), or the master that Redis
 * Sentinel names (`redis-sentinel://[user:password@]host:port[,host:port…]/master[/db]`,
 * with `?sentinelPassword=…` when the sentinels want one). With Sentinel every connection
 * follows a failover to the new master.
 */
export type RedisTarget =
  | { kind: 'server'; url: string }
  | {
      kind: 'sentinel';
      sentinels: { host: string; port: number }[];
      name: string;
      username?: string;
      password?: string;
      db: number;
      sentinelPassword?: string;
    };

export const REDIS_URL_FORMS = 'redis://HOST:PORT, rediss://HOST:PORT (TLS) or redis-sentinel://HOST:PORT[,HOST:PORT…]/MASTER';

const SENTINEL_URL = /^redis-sentinel:\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/?@]+)\/([^/?]+)(?:\/(\d+))?\/?(?:\?(.*))?$/i;

/** Reads a Redis URL; throws an Error naming the accepted forms when it is none of them. */
export function parseRedisUrl(text: string): RedisTarget {
  const sentinel = SENTINEL_URL.exec(text);
  if (sentinel) {
    const [, username, password, hosts, name, db, query] = sentinel;
    const sentinels = hosts.split(',').map((hostPort) => {
      const found = /^\[?([^\]]+?)\]?(?::(\d+))?$/.exec(hostPort.trim());
      if (!found) throw new Error(`"${hostPort}" is not HOST:PORT`);
      return { host: found[1], port: Number(found[2] ?? 26379) };
    });
    const sentinelPassword = new URLSearchParams(query ?? '').get('sentinelPassword') ?? undefined;
    return {
      kind: 'sentinel',
      sentinels,
      name: decodeURIComponent(name),
      db: Number(db ?? 0),
      ...(username ? { username: decodeURIComponent(username) } : {}),
      ...(password ? { password: decodeURIComponent(password) } : {}),
      ...(sentinelPassword ? { sentinelPassword } : {}),
    };
  }
  const url = new URL(text);
  // The scheme in any case (URL lowercases it; a REDISS:// read as plain would drop TLS silently).
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw new Error(`the scheme ${url.protocol}// is not one of ${REDIS_URL_FORMS}`);
  return { kind: 'server', url: `${url.protocol}${text.slice(text.indexOf('//'))}` };
}

/** ioredis options for the target (besides the URL, for one server). */
function clientOptions(target: RedisTarget): RedisOptions {
  const common: RedisOptions = {
    // Never give up on a command while Redis restarts or fails over (BullMQ requires it of its blocking connections).
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    // A master demoted by a failover answers writes with READONLY: connect again (to the new one).
    reconnectOnError: (error) => (/READONLY/.test(error.message) ? 2 : false),
  };
  if (target.kind === 'server') return common;
  return {
    ...common,
    sentinels: target.sentinels,
    name: target.name,
    db: target.db,
    failoverDetector: true,
    ...(target.username ? { username: target.username } : {}),
    ...(target.password ? { password: target.password } : {}),
    ...(target.sentinelPassword ? { sentinelPassword: target.sentinelPassword } : {}),
  };
}

/** An ioredis client for the URL (one server or Sentinel's master). */
export function connectRedis(url: string): Redis {
  const target = parseRedisUrl(url);
  return target.kind === 'server' ? new Redis(target.url, clientOptions(target)) : new Redis(clientOptions(target));
}

/** Where to open a connection of one's own (the consumers' chunk reader): the server, or Sentinel's master now. */
export interface RedisAddress {
  host: string;
  port: number;
  tls: boolean;
  username?: string;
  password?: string;
  db: number;
}

export async function redisAddress(url: string): Promise<RedisAddress> {
  const target = parseRedisUrl(url);
  if (target.kind === 'server') {
    const { hostname, port, username, password, pathname, protocol } = new URL(target.url);
    return {
      host: hostname.replace(/^\[|\]$/g, '') || 'localhost',
      port: Number(port) || 6379,
      tls: protocol === 'rediss:',
      ...(username ? { username: decodeURIComponent(username) } : {}),
      ...(password ? { password: decodeURIComponent(password) } : {}),
      db: Number(pathname.slice(1) || 0),
    };
  }
  const failures: string[] = [];
  for (const sentinel of target.sentinels) {
    const probe = new Redis({
      ...sentinel,
      lazyConnect: true,
      retryStrategy: () => null,
      maxRetriesPerRequest: 1,
      ...(target.sentinelPassword ? { password: target.sentinelPassword } : {}),
    });
    probe.on('error', () => {});
    try {
      await probe.connect();
      const master = (await probe.call('SENTINEL', 'get-master-addr-by-name', target.name)) as [string, string] | null;
      if (master) {
        return {
          host: master[0],
          port: Number(master[1]),
          tls: false,
          db: target.db,
          ...(target.username ? { username: target.username } : {}),
          ...(target.password ? { password: target.password } : {}),
        };
      }
      failures.push(`${sentinel.host}:${sentinel.port} knows no master ${target.name}`);
    } catch (error) {
      failures.push(`${sentinel.host}:${sentinel.port}: ${(error as Error).message}`);
    } finally {
      probe.disconnect();
    }
  }
  throw new Error(`no sentinel named the master ${target.name} (${failures.join('; ')})`);
}

/**
 * A client for a command that runs once (status, resync, destinations): it does not wait for
 * Redis to come back but says what is wrong, as a UserError (exit 2), without the password.
 */
export async function connectRedisOnce(url: string): Promise<Redis> {
  const target = parseRedisUrl(url);
  const options: RedisOptions = {
    ...clientOptions(target),
    lazyConnect: true,
    connectTimeout: 3_000,
    maxRetriesPerRequest: 1,
    retryStrategy: () => null,
    ...(target.kind === 'sentinel' ? { sentinelRetryStrategy: () => null } : {}),
  };
  const redis = target.kind === 'server' ? new Redis(target.url, options) : new Redis(options);
  // The cause (ECONNREFUSED, a timeout) comes as an event; the connect only says "closed".
  let cause: Error | undefined;
  redis.on('error', (error: Error) => (cause ??= error));
  try {
    await redis.connect();
    await redis.ping();
    return redis;
  } catch (error) {
    redis.disconnect();
    const message = redact((cause ?? (error as Error)).message);
    const tls = target.kind === 'server' && target.url.startsWith('rediss:');
    const fix = /NOAUTH|WRONGPASS|invalid password|invalid username/i.test(message)
      ? 'Check the user and password in --redis-url (REDIS_URL).'
      : `Check --redis-url (REDIS_URL) and that Redis is running${tls ? ', and that it speaks TLS on that port (rediss:// asks for TLS; redis:// for none)' : ''}.`;
    throw new UserError(`Cannot reach Redis (${message}). ${fix}`);
  }
}
