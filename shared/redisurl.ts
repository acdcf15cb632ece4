// Apart from the clients: validating a flag need not load ioredis (every command's start-up pays for what it imports).

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
