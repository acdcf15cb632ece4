import { UNCHANGED, type Column, type ReplicaIdentity, type Value } from '../shared/events.js';
import type { Lsn } from '../shared/lsn.js';

/**
 * A decoder for the pgoutput logical decoding protocol, version 1
 * (https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html).
 * Values are kept as the text Postgres sent; nothing goes through pg's global type parsers.
 */
export type PgoutputMessage =
  | { tag: 'begin'; finalLsn: Lsn; commitTime: bigint; xid: number }
  | { tag: 'commit'; commitLsn: Lsn; endLsn: Lsn; commitTime: bigint }
  | { tag: 'relation'; oid: number; schema: string; name: string; replicaIdentity: ReplicaIdentity; columns: Column[] }
  | { tag: 'type'; oid: number; schema: string; name: string }
  | { tag: 'insert'; relation: number; row: Value[] }
  | { tag: 'update'; relation: number; row: Value[]; old?: Value[] }
  | { tag: 'delete'; relation: number; old: Value[] }
  | { tag: 'truncate'; relations: number[]; cascade: boolean; restartIdentity: boolean }
  | { tag: 'origin' }
  | { tag: 'message' };

const REPLICA_IDENTITIES: Record<string, ReplicaIdentity> = { d: 'default', n: 'nothing', f: 'full', i: 'index' };

class Reader {
  offset = 0;
  constructor(private readonly buffer: Buffer) {}

  byte(): number {
    return this.buffer[this.offset++];
  }
  int16(): number {
    const value = this.buffer.readInt16BE(this.offset);
    this.offset += 2;
    return value;
  }
  int32(): number {
    const value = this.buffer.readInt32BE(this.offset);
    this.offset += 4;
    return value;
  }
  uint32(): number {
    const value = this.buffer.readUInt32BE(this.offset);
    this.offset += 4;
    return value;
  }
  uint64(): bigint {
    const value = this.buffer.readBigUInt64BE(this.offset);
    this.offset += 8;
    return value;
  }
  /** A NUL-terminated string. */
  cstring(): string {
    const end = this.buffer.indexOf(0, this.offset);
    const value = this.buffer.toString('utf8', this.offset, end);
    this.offset = end + 1;
    return value;
  }
  text(length: number): string {
    const value = this.buffer.toString('utf8', this.offset, this.offset + length);
    this.offset += length;
    return value;
  }
  tuple(): Value[] {
    const count = this.int16();
    const values: Value[] = new Array(count);
    for (let i = 0; i < count; i++) {
      const kind = this.byte();
      if (kind === 0x74 /* t */) values[i] = this.text(this.int32());
      else if (kind === 0x6e /* n */) values[i] = null;
      else if (kind === 0x75 /* u */) values[i] = UNCHANGED;
      else throw new Error(`pgoutput: unexpected tuple value kind ${String.fromCharCode(kind)} (binary mode is not requested)`);
    }
    return values;
  }
}

export function decodePgoutput(buffer: Buffer): PgoutputMessage {
  const reader = new Reader(buffer);
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
    case 'I': {
      const relation = reader.uint32();
      reader.byte(); // 'N'
      return { tag: 'insert', relation, row: reader.tuple() };
    }
    case 'U': {
      const relation = reader.uint32();
      let kind = String.fromCharCode(reader.byte());
      let old: Value[] | undefined;
      if (kind === 'K' || kind === 'O') {
        old = reader.tuple();
        kind = String.fromCharCode(reader.byte());
      }
      return { tag: 'update', relation, row: reader.tuple(), ...(old ? { old } : {}) };
    }
    case 'D': {
      const relation = reader.uint32();
      reader.byte(); // 'K' or 'O'
      return { tag: 'delete', relation, old: reader.tuple() };
    }
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
