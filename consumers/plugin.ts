import type { Option } from 'commander';
import type { Redis } from 'ioredis';
import type { z } from 'zod';
import type { Destination } from './destination.js';

/** What opening a destination may use besides its options: the pipeline's Redis, and the names. */
export interface DestinationContext {
  redis: Redis;
  pipeline: string;
  /** The destination's name in the pipeline (its queues, its applied marks). */
  name: string;
}

/**
 * A destination type as the CLI (`consumer <type>`), `run --config` (`type: <type>`) and the
 * library see it. Each folder under consumers/ exports one as `plugin` from its plugin.ts, and
 * the CLI finds them there (consumers/plugins.ts): adding a destination touches its folder, its
 * tests and the README. plugin.ts stays light: the destination's own code, with its native
 * libraries and clients, is imported by open() only.
 */
export interface DestinationPlugin<Options extends z.ZodObject = z.ZodObject> {
  /** Its name in `consumer <type>` and in `type:` of a run file. */
  type: string;
  /** One line for `--help`. */
  description: string;
  /**
   * Its options as a run file gives them (camelCase keys). Messages name the flag, as the
   * shared ones do ("--path (DUCKDB_PATH) is required: …"); in a run file, the key path.
   */
  options: Options;
  /** The flags `consumer <type>` adds for them. */
  flags: () => Option[];
  /** The options from `consumer <type>`'s parsed flags, when they are not named alike. */
  fromFlags?: (flags: Record<string, unknown>) => Record<string, unknown>;
  open: (options: z.infer<Options>, context: DestinationContext) => Promise<Destination>;
}
