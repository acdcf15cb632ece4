import { readFileSync } from 'node:fs';
import { z } from 'zod';
import type { DestinationPlugin } from '../consumers/plugin.js';
import { PRODUCER_DEFAULTS } from '../producer/options.js';
import { destinationName, metricsPort, pgUrl, pipelineId, redisUrl } from '../shared/config.js';
import { errorMessage, UserError } from '../shared/errors.js';

/** `run --config FILE`: the producer's settings and every destination, strictly (an unknown key is an error). */
function runFileSchema(plugins: DestinationPlugin[]) {
  const destination = z.discriminatedUnion(
    'type',
    plugins.map((plugin) => plugin.options.extend({ type: z.literal(plugin.type), name: destinationName }).strict()) as unknown as [
      z.ZodObject,
      ...z.ZodObject[],
    ],
  );
  return z.strictObject({
    pipeline: pipelineId,
    pgUrl,
    redisUrl,
    publication: z.string().min(1),
    slot: z.string(),
    mode: z.enum(['both', 'copy', 'cdc']).default('both'),
    partitions: z.number().int().positive().default(PRODUCER_DEFAULTS.partitions),
    maxDestinationLagBytes: z.number().int().nonnegative().default(PRODUCER_DEFAULTS.maxDestinationLagBytes),
    metricsPort,
    destinations: z.array(destination).min(1, 'at least one destination is needed'),
  });
}

/** A run file's settings; each destination is its type, its name and its type's options. */
export type RunFile = Omit<z.infer<ReturnType<typeof runFileSchema>>, 'destinations'> & {
  destinations: ({ type: string; name: string } & Record<string, unknown>)[];
};

/** Every key the file may use, for "did you mean" suggestions. */
const keysOf = (plugins: DestinationPlugin[]) => [
  'pipeline',
  'pgUrl',
  'redisUrl',
  'publication',
  'slot',
  'mode',
  'partitions',
  'maxDestinationLagBytes',
  'metricsPort',
  'destinations',
  'type',
  'name',
  ...plugins.flatMap((plugin) => Object.keys(plugin.options.shape)),
];

export async function readRunFile(path: string, plugins: DestinationPlugin[]): Promise<RunFile> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new UserError(`Cannot read --config ${path}: ${errorMessage(error)}`);
  }
  let raw: unknown;
  try {
    // Loaded only by `run`: the other commands never pay for it.
    raw = (await import('yaml')).parse(expandVariables(text, path));
  } catch (error) {
    if (error instanceof UserError) throw error;
    throw new UserError(`--config ${path} is not valid YAML: ${errorMessage(error)}`);
  }
  return parseRunConfig(raw, plugins, `--config ${path}`);
}

/** A run configuration (a run file's document, or the body of `serve`'s create request), strictly; `what` names it in the error. */
export function parseRunConfig(raw: unknown, plugins: DestinationPlugin[], what: string): RunFile {
  const result = runFileSchema(plugins).safeParse(raw);
  if (result.success) return result.data as RunFile;
  const known = keysOf(plugins);
  const problems = result.error.issues.flatMap((issue) => describe(issue, known));
  throw new UserError(`${what} is not valid:\n${[...new Set(problems)].map((problem) => `  ${problem}`).join('\n')}`);
}

/**
 * `${NAME}` is replaced by the environment variable, `${NAME:-default}` by it or the default;
 * an unset variable without a default is an error, never an empty value.
 */
function expandVariables(text: string, path: string): string {
  const unset = new Set<string>();
  const expanded = text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g, (_, name: string, fallback: string | undefined) => {
    const value = process.env[name];
    if (value !== undefined && value !== '') return value;
    if (fallback !== undefined) return fallback;
    unset.add(name);
    return '';
  });
  if (unset.size > 0) {
    const names = [...unset].join(', ');
    throw new UserError(
      `--config ${path} uses \${${[...unset][0]}}, but ${names} ${unset.size > 1 ? 'are' : 'is'} not set in the environment: set ${unset.size > 1 ? 'them' : 'it'}, or give a default as \${NAME:-default}.`,
    );
  }
  return expanded;
}

/** One issue as "key.path: what is wrong", without the CLI flag names the shared messages carry. */
function describe(issue: z.core.$ZodIssue, known: string[]): string[] {
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => {
      const near = closest(key, known);
      return `${keyPath([...issue.path, key])}: unknown key${near ? ` (did you mean "${near}"?)` : ''}`;
    });
  }
  const where = keyPath(issue.path) || 'the file';
  if (issue.code === 'invalid_type' && issue.input === undefined) return [`${where}: is required`];
  // "--pg-url (PG_URL) must be …" → "must be …": in a file, the key path names it.
  return [`${where}: ${issue.message.replace(/^--[a-z-]+(?: \([A-Z_]+\))? /, '')}`];
}

function keyPath(path: PropertyKey[]): string {
  return path.map((part, index) => (typeof part === 'number' ? `[${part}]` : index === 0 ? String(part) : `.${String(part)}`)).join('');
}

/** The known key nearest to `key` (by edit distance, case-insensitive), if it is near enough to be a typo. */
function closest(key: string, known: string[]): string | undefined {
  let best: { key: string; distance: number } | undefined;
  for (const candidate of known) {
    const distance = editDistance(key.toLowerCase(), candidate.toLowerCase());
    if (!best || distance < best.distance) best = { key: candidate, distance };
  }
  return best && best.distance <= Math.max(2, Math.floor(key.length / 3)) ? best.key : undefined;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    previous = current;
  }
  return previous[b.length];
}
