import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { DestinationPlugin } from './plugin.js';

/**
 * The built-in destination types: every folder beside this file with a plugin.js, by type
 * name. Only the plugins are loaded, not the destinations (see plugin.ts).
 */
export async function builtInDestinations(): Promise<DestinationPlugin[]> {
  const here = dirname(fileURLToPath(import.meta.url));
  const plugins: DestinationPlugin[] = [];
  for (const entry of readdirSync(here, { withFileTypes: true })) {
    const file = join(here, entry.name, 'plugin.js');
    if (entry.isDirectory() && existsSync(file)) plugins.push((await import(pathToFileURL(file).href)).plugin);
  }
  return plugins.sort((a, b) => a.type.localeCompare(b.type));
}
