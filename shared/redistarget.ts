import { Redis, type RedisOptions } from 'ioredis';
import { redact, UserError } from './errors.js';
import { parseRedisUrl, type RedisTarget } from './redisurl.js';

export { parseRedisUrl } from './redisurl.js';

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

/**
 * An ioredis client for the URL (one server or Sentinel's master). `failFast`: while Redis is
 * unreachable a command fails at once instead of waiting for it (someone is waiting for an answer).
 */
export function connectRedis(url: string, { failFast = false } = {}): Redis {
  const target = parseRedisUrl(url);
  const options = { ...clientOptions(target), ...(failFast ? { maxRetriesPerRequest: 0, enableOfflineQueue: false } : {}) };
  return target.kind === 'server' ? new Redis(target.url, options) : new Redis(options);
}

/** Redis' answers to a login it refuses (a wrong or changed password, a removed or disabled ACL user). */
const LOGIN_REFUSED = /^(NOAUTH|WRONGPASS)\b|invalid username-password pair|invalid password/;
/** How long Redis may refuse the login before a process gives up: longer than a failover's moment. */
const LOGIN_GRACE_MS = 10_000;

/**
 * Resolves with the error to exit with once Redis has refused the client's login for
 * LOGIN_GRACE_MS since it last was ready: its password was changed or its ACL user removed.
 * ioredis would reconnect, and every command wait, for ever; a human must fix this.
 */
export function loginRefused(redis: Redis): Promise<UserError> {
  return new Promise((resolve) => {
    let since: number | undefined;
    redis.on('ready', () => (since = undefined));
    redis.on('error', (error: Error) => {
      if (!LOGIN_REFUSED.test(error.message)) return;
      since ??= Date.now();
      if (Date.now() - since < LOGIN_GRACE_MS) return;
      const answer = redact(error.message).split(/[,.]/)[0];
      resolve(
        new UserError(
          `Redis has refused pg-replicate's login for ${Math.round((Date.now() - since) / 1000)} s (${answer}): the password or ACL user in --redis-url / REDIS_URL is wrong, or was changed or removed in Redis. Set the right one, then start again.`,
        ),
      );
    });
  });
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
