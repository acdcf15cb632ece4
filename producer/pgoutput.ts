import type { Column, ReplicaIdentity } from '../shared/events.js';
import type { Lsn } from '../shared/lsn.js';
import { ByteReader, type RowOp } from '../shared/tupledata.js';

/**
 * A decoder for the pgoutput logical decoding protocol, version 1
 * (https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html).
 * A row change's images are not decoded here: they are passed on as the walsender sent them
 * (shared/tupledata), to be decoded by the consumer.
 */
export type PgoutputMessage =
  | { tag: 'begin'; finalLsn: Lsn; commitTime: bigint; xid: number }
  | { tag: 'commit'; commitLsn: Lsn; endLsn: Lsn; commitTime: bigint }
  | { tag: 'relation'; oid: number; schema: string; name: string; replicaIdentity: ReplicaIdentity; columns: Column[] }
  | { tag: 'type'; oid: number; schema: string; name: string }
  | { tag: 'insert' | 'update' | 'delete'; relation: number; images: Buffer }
  | { tag: 'truncate'; relations: number[]; cascade: boolean; restartIdentity: boolean }
  | { tag: 'origin' }
  | { tag: 'message' };

const REPLICA_IDENTITIES: Record<string, ReplicaIdentity> = { d: 'default', n: 'nothing', f: 'full', i: 'index' };

const ROW_TAGS: Record<number, RowOp> = { 73: 'insert', 85: 'update', 68: 'delete' };

/** The operation of a row change message, from its first byte; undefined for any other message. */
export function rowOp(tag: number): RowOp | undefined {
  return ROW_TAGS[tag];
}

export function decodePgoutput(buffer: Buffer): PgoutputMessage {
  const reader = new ByteReader(buffer);
  const tag = String.fromCharCode(reader.byte());
  switch (tag) {
    case 'B':
      return { tag: 'begin', finalLsn: reader.uint64(), commitTime: reader.uint64(), xid: reader.uint32() };
    case 'C': {
      reader.byte(); // flags, unused
      return { tag: 'commit', commitLsn: reader.uint64(), endLsn: reader.uint64(), commitTime: reader.uint64() };
    }
    case 'R': {
      const oid = reader.uint32();
      // An empty namespace means pg_catalog.
      const schema = reader.cstring() || 'pg_catalog';
      const name = reader.cstring();
      const replicaIdentity = REPLICA_IDENTITIES[String.fromCharCode(reader.byte())] ?? 'default';
      const count = reader.int16();
      const columns: Column[] = [];
      for (let i = 0; i < count; i++) {
        const flags = reader.byte();
        columns.push({ isKey: (flags & 1) === 1, name: reader.cstring(), typeOid: reader.uint32(), typeModifier: reader.int32() });
      }
      return { tag: 'relation', oid, schema, name, replicaIdentity, columns };
    }
    case 'Y':
      return { tag: 'type', oid: reader.uint32(), schema: reader.cstring(), name: reader.cstring() };
    case 'I':
    case 'U':
    case 'D':
      // A view into the message: copy it (or write it somewhere) before the read buffer is reused.
      return { tag: ROW_TAGS[buffer[0]], relation: reader.uint32(), images: buffer.subarray(5) };
    case 'T': {
      const count = reader.uint32();
      const options = reader.byte();
      const relations: number[] = [];
      for (let i = 0; i < count; i++) relations.push(reader.uint32());
      return { tag: 'truncate', relations, cascade: (options & 1) !== 0, restartIdentity: (options & 2) !== 0 };
    }
    case 'O':
      return { tag: 'origin' };
    case 'M':
      return { tag: 'message' };
    default:
      throw new Error(`pgoutput: unknown message type ${JSON.stringify(tag)}`);
  }
}
