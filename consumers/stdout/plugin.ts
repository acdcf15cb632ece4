import { z } from 'zod';
import type { DestinationPlugin } from '../plugin.js';

const options = z.object({});

export const plugin: DestinationPlugin<typeof options> = {
  type: 'stdout',
  description: 'Print one JSON line per change to stdout.',
  options,
  flags: () => [],
  open: async (_, { redis, pipeline, name }) => new (await import('./destination.js')).StdoutDestination(redis, pipeline, name),
};
