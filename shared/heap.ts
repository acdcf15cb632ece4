import { setFlagsFromString } from 'node:v8';

/**
 * How far V8 lets the old generation grow past what a full collection left live, before the
 * next one: 1.5 ×, where V8 chooses up to 4 × by how fast it collects.
 *
 * A consumer applying a large transaction allocates an object or two per change, and they live
 * through the batch's apply (about a second): long enough to be moved to the old generation,
 * where they stay as garbage until a full collection. Left to choose, V8 grew the heap to
 * 120–140 MB around 25–30 MB live (a heap snapshot); at 1.5 × it stays near 80 MB, and the
 * consumer's peak RSS in a 5 M-row transaction went from 355 to 307 MB with no more CPU
 * (14.0 s against 15.2 s, side by side; 1.25 × gave the same). V8 reads the flag at every
 * collection, so it takes effect when set in a running process.
 */
const HEAP_GROWING_PERCENT = 50;

/**
 * The young generation stays at the size V8 starts it with (two semi-spaces of 1 MB) instead of
 * doubling up to 2 × 16 MB when much survives a scavenge: in a consumer that is mostly a batch's
 * change records, which live through its apply whatever the young generation's size. In the
 * 5 M-row transaction the consumer's peak RSS went from 302–313 to 265–270 MB, and in the
 * 10 M-row backfill from 364 to 336. It costs CPU where changes stream in bulk: measured again
 * once change records stopped keeping a version object each, the 5 M-row transaction took
 * 21.0 s and 12.2 consumer CPU-seconds against 19.2 s and 10.8 with the space grown (peak 260
 * against 294 MB, side by side); the 1 M-row update and pgbench-like transactions, nothing
 * measurable; a backfill, none. Like the flag above, V8 reads it each time it would grow the
 * space.
 */
const SEMI_SPACE_GROWTH_FACTOR = 1;

/** For processes that apply batches (consumers, `run`, `serve`): the whole process's heap. */
export function limitHeapGrowth(): void {
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  setFlagsFromString(`--semi-space-growth-factor=${SEMI_SPACE_GROWTH_FACTOR}`);
}
