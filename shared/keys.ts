/**
 * Every Redis key and BullMQ queue name in one place. Keys carry a Redis Cluster hash tag so a
 * pipeline's own keys, and each queue's keys, stay in one slot.
 */
export const QUEUE_PREFIX = 'pgr';

export const NAME_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

export const keys = {
  /** Hash: slot, partitions, copy state, destinations and the running producer's epoch. */
  state: (pipeline: string) => `pgr:{${pipeline}}:state`,
  /** Hash partition → "epoch:seq" of the last batch this destination applied durably. */
  applied: (pipeline: string, destination: string) => `pgr:{${pipeline}}:applied:${destination}`,
  /** Hash partition → JSON health of this destination's partition (ok, retrying, parked + error). */
  health: (pipeline: string, destination: string) => `pgr:{${pipeline}}:health:${destination}`,
  /** List of resync requests for the producer: JSON { tableOid, destinations? }. */
  requests: (pipeline: string) => `pgr:{${pipeline}}:requests`,
  /** List of {request, error, at} JSON: requests the producer refused (malformed, or for a table not published). */
  refusedRequests: (pipeline: string) => `pgr:{${pipeline}}:refused-requests`,
  /** Hash table OID → JSON progress of the table's initial copy (ranges done, rows): what a restarted producer continues. */
  copyProgress: (pipeline: string) => `pgr:{${pipeline}}:copy-progress`,
  /** Hash table OID → rows of the initial copy applied by the slowest destination, as the producer last measured them. */
  copyApplied: (pipeline: string) => `pgr:{${pipeline}}:copy-applied`,
  /** Hash table OID → JSON record of a copy beside the stream in progress (TableSyncRecord): what a restarted producer continues. */
  tableSyncs: (pipeline: string) => `pgr:{${pipeline}}:table-syncs`,
  /** String (with a TTL, renewed): JSON {token, host, pid, since} of the one producer running the pipeline. */
  producerLease: (pipeline: string) => `pgr:{${pipeline}}:producer`,
  /** Hash source table → its name at the destination, as the destination placed it (for status). */
  places: (pipeline: string, destination: string) => `pgr:{${pipeline}}:places:${destination}`,
  /** Hash source table → JSON {error, since, fix}: the destination's quarantined tables (consumers/quarantine), for status. */
  quarantined: (pipeline: string, destination: string) => `pgr:{${pipeline}}:quarantined:${destination}`,
  /** Sorted set "host:pid" → last heartbeat (ms): the destination's consumers, for status. */
  consumers: (pipeline: string, destination: string) => `pgr:{${pipeline}}:consumers:${destination}`,
  /** Hash changes/rows → how many the destination has applied since the pipeline began (its throughput, for the status page). */
  totals: (pipeline: string, destination: string) => `pgr:{${pipeline}}:totals:${destination}`,
  /** Hash table → JSON state, for destinations that have no store of their own (stdout). */
  tableStates: (pipeline: string, destination: string) => `pgr:{${pipeline}}:tables:${destination}`,
};

/** Hash pipeline id → the JSON run configuration of a pipeline that `pg-replicate serve` runs (and resumes when it restarts). */
export const SERVED_PIPELINES = 'pgr:served-pipelines';

export function queueName(pipeline: string, destination: string, partition: number): string {
  return `{${pipeline}.${destination}.${partition}}`;
}

/**
 * Which partition a table's changes go to: FNV-1a of the table's OID, stable across processes,
 * versions and renames (a renamed table keeps its OID, so its changes stay in order).
 */
export function partitionOf(tableOid: number, partitions: number): number {
  const text = String(tableOid);
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash % partitions;
}

/** The applied marker a consumer writes after a batch: which producer run and which batch. */
export function formatApplied(epoch: number, seq: number): string {
  return `${epoch}:${seq}`;
}

export function parseApplied(text: string | undefined): { epoch: number; seq: number } | undefined {
  if (!text) return undefined;
  const [epoch, seq] = text.split(':').map(Number);
  return { epoch, seq };
}
