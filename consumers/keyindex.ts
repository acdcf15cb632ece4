/**
 * Keys (as shared/tupledata's tupleKey makes them) to a number each, for one run of changes
 * at a time: the run's last word per key, in the order keys were first seen.
 *
 * Integer keys, nearly all of them, go into an open-addressing table of typed arrays that is
 * kept from one run to the next: a Map grew a new table of its own for every batch, which was a
 * quarter of what the consumer allocated in a 1 M-row update (V8's sampling heap profiler),
 * and each allocation brings the next young-generation collection nearer, which copies the
 * batch's live changes again. Other keys (text, several columns) go into a Map.
 */
export class KeyIndex {
  private keys = new Float64Array(INITIAL_SLOTS);
  /** The value stored + 1; 0: an empty slot. */
  private stored = new Int32Array(INITIAL_SLOTS);
  /** Occupied slots in the order their keys were first seen. */
  private order = new Int32Array(INITIAL_SLOTS / 2);
  private count = 0;
  private readonly texts = new Map<string, number>();

  set(key: number | string, value: number): void {
    if (typeof key === 'string') {
      this.texts.set(key, value);
      return;
    }
    if (2 * (this.count + 1) > this.keys.length) this.grow();
    const slot = this.slotOf(key, this.keys, this.stored);
    if (this.stored[slot] === 0) {
      this.keys[slot] = key;
      this.order[this.count++] = slot;
    }
    this.stored[slot] = value + 1;
  }

  /** Every key's value, integer keys first (each group in first-seen order); the index is empty after. */
  take(): number[] {
    const values = new Array<number>(this.count + this.texts.size);
    for (let index = 0; index < this.count; index++) {
      const slot = this.order[index];
      values[index] = this.stored[slot] - 1;
      this.stored[slot] = 0;
    }
    let index = this.count;
    for (const value of this.texts.values()) values[index++] = value;
    this.count = 0;
    this.texts.clear();
    return values;
  }

  /** Forgets every key (a run given up half-way). */
  clear(): void {
    this.take();
  }

  /** The slot holding `key`, or the empty one where it goes (linear probing; the table is at most half full). */
  private slotOf(key: number, keys: Float64Array, stored: Int32Array): number {
    const mask = keys.length - 1;
    // Both halves of the integer mixed: ids beyond 2^32 differ in their high bits too.
    let slot = Math.imul((key | 0) ^ ((key / 4294967296) | 0), 0x9e3779b1) & mask;
    while (stored[slot] !== 0 && keys[slot] !== key) slot = (slot + 1) & mask;
    return slot;
  }

  private grow(): void {
    const keys = new Float64Array(this.keys.length * 2);
    const stored = new Int32Array(keys.length);
    const order = new Int32Array(keys.length / 2);
    for (let index = 0; index < this.count; index++) {
      const slot = this.slotOf(this.keys[this.order[index]], keys, stored);
      keys[slot] = this.keys[this.order[index]];
      stored[slot] = this.stored[this.order[index]];
      order[index] = slot;
    }
    this.keys = keys;
    this.stored = stored;
    this.order = order;
  }
}

const INITIAL_SLOTS = 1 << 16;
