import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command, CommanderError, Option } from 'commander';
import { z } from 'zod';
import { RUNNER_DEFAULTS } from '../consumers/options.js';
import type { DestinationPlugin } from '../consumers/plugin.js';
import { builtInDestinations } from '../consumers/plugins.js';
import { PRODUCER_DEFAULTS, PRODUCER_HEAP_MB } from '../producer/options.js';
import { runProducerThread } from '../producer/thread.js';
import { destinationName, heapMb, metricsPort, pgUrl, pipelineId, producerConfig, redisUrl, runnerConfig, validate } from '../shared/config.js';
import { UserError } from '../shared/errors.js';
import { limitHeapGrowth } from '../shared/heap.js';
import { writeLogLine } from '../shared/log.js';
import { exitWithError, runUntilStopped } from './lifecycle.js';
import { bytes, sizeText } from './sizes.js';

// Modules that talk to Postgres, Redis or a destination are imported by the commands that use
// them: the producer command's main thread stays small (the producer runs on a worker thread).

/** On a terminal with readable logs: progress bars for the copy, then a line about the stream (cli/progress.ts). Off a terminal, nothing. */
async function terminalProgress(redisUrl: string, pipeline: string, streams: boolean) {
  if (!process.stderr.isTTY || process.env.LOG_FORMAT !== 'pretty') return undefined;
  return (await import('./progress.js')).TerminalProgress.start(redisUrl, pipeline, streams);
}

const program = new Command('pg-replicate')
  .version(JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version, '-V, --version', 'print the version')
  .addOption(
    new Option('--log-format <format>', 'logs as JSON lines, or pretty for people (default: pretty on a terminal, else json)')
      .choices(['json', 'pretty'])
      .env('LOG_FORMAT'),
  )
  .description('Replicate PostgreSQL tables (copy, then every change) through Redis into DuckDB, stdout and more, exactly once.')
  .exitOverride()
  .showHelpAfterError('(run with --help for usage)');

const redisOption = () => new Option('--redis-url <url>', 'Redis URL (required)').env('REDIS_URL');
const pipelineOption = () => new Option('--pipeline <id>', 'pipeline id: names its queues and state in Redis (required)').env('PIPELINE_ID');
const integer = (value: string) => Number(value);
const metricsOption = () => new Option('--metrics-port <port>', 'serve Prometheus metrics on this port at /metrics (default: not served)').env('METRICS_PORT');

program
  .command('producer')
  .description('Read the replication slot (after copying the tables) and enqueue batches for every destination.')
  .addOption(new Option('--pg-url <url>', 'Postgres URL, of a user with REPLICATION (required)').env('PG_URL'))
  .addOption(new Option('--publication <name>', 'publication whose tables are replicated (required)').env('PUBLICATION'))
  .addOption(new Option('--slot <name>', 'logical replication slot, created if missing (required)').env('SLOT'))
  .addOption(pipelineOption())
  .addOption(redisOption())
  .addOption(
    new Option('--mode <mode>', 'both = copy then stream; copy = copy then exit; cdc = stream only')
      .choices(['both', 'copy', 'cdc'])
      .default(PRODUCER_DEFAULTS.mode)
      .env('MODE'),
  )
  .addOption(
    new Option('--destinations <names>', 'comma-separated destination names to feed from the start (consumers started later register themselves)').env(
      'DESTINATIONS',
    ),
  )
  .addOption(new Option('--partitions <n>', 'partition queues per destination').default(PRODUCER_DEFAULTS.partitions).argParser(integer).env('PARTITIONS'))
  .addOption(new Option('--max-batch-changes <n>', 'changes per batch at most').default(PRODUCER_DEFAULTS.maxBatchChanges).argParser(integer))
  .addOption(
    new Option('--max-batch-bytes <size>', 'approximate bytes per batch at most')
      .default(PRODUCER_DEFAULTS.maxBatchBytes, sizeText(PRODUCER_DEFAULTS.maxBatchBytes))
      .argParser(bytes),
  )
  .addOption(
    new Option('--flush-interval-ms <n>', 'longest a committed change waits in an open batch (a transaction still being read fills whole batches)')
      .default(PRODUCER_DEFAULTS.flushIntervalMs)
      .argParser(integer),
  )
  .addOption(
    new Option('--max-backlog-batches <n>', 'unapplied batches at which reading the slot pauses')
      .default(PRODUCER_DEFAULTS.maxBacklogBatches)
      .argParser(integer),
  )
  .addOption(
    new Option('--max-backlog-bytes <size>', 'unapplied bytes (approximate) at which reading the slot pauses')
      .default(PRODUCER_DEFAULTS.maxBacklogBytes, sizeText(PRODUCER_DEFAULTS.maxBacklogBytes))
      .argParser(bytes),
  )
  .addOption(
    new Option(
      '--max-pending-transactions <n>',
      "transactions read but not yet applied by every destination at which reading the slot pauses (bounds the producer's memory)",
    )
      .default(PRODUCER_DEFAULTS.maxPendingTransactions)
      .argParser(integer),
  )
  .addOption(
    new Option(
      '--max-destination-lag-bytes <size>',
      'WAL a destination may leave unapplied before it is detached: it stops holding the slot, and gets a fresh copy when its consumer comes back, e.g. 50GiB',
    )
      .default(PRODUCER_DEFAULTS.maxDestinationLagBytes, 'no bound')
      .argParser(bytes)
      .env('MAX_DESTINATION_LAG_BYTES'),
  )
  .addOption(
    new Option('--status-interval-ms <n>', 'standby status update interval (keep well below wal_sender_timeout)')
      .default(PRODUCER_DEFAULTS.statusIntervalMs)
      .argParser(integer),
  )
  .addOption(
    new Option('--heartbeat-interval-ms <n>', 'idle time after which a heartbeat message is written')
      .default(PRODUCER_DEFAULTS.heartbeatIntervalMs)
      .argParser(integer),
  )
  .addOption(new Option('--copy-connections <n>', 'parallel connections for the table copy').default(PRODUCER_DEFAULTS.copyConnections).argParser(integer))
  .addOption(
    new Option('--copy-chunk-rows <n>', 'rows per copy batch (exactly, but for the last of a range)')
      .default(PRODUCER_DEFAULTS.copyChunkRows)
      .argParser(integer),
  )
  .addOption(
    new Option('--copy-chunk-bytes <size>', "bytes per copy batch at most (chunks stream through Redis, not through the producer's memory)")
      .default(PRODUCER_DEFAULTS.copyChunkBytes, sizeText(PRODUCER_DEFAULTS.copyChunkBytes))
      .argParser(bytes),
  )
  .addOption(
    new Option('--copy-range-blocks <n>', 'heap blocks (8 kB) per CTID range of a table copy: ranges are copied in parallel and resumed after a restart')
      .default(PRODUCER_DEFAULTS.copyRangeBlocks)
      .argParser(integer),
  )
  .addOption(metricsOption())
  .addOption(
    new Option('--heap-mb <n>', "heap size of the producer's thread (what it holds is bounded; the cap keeps V8 from growing the heap far beyond it)")
      .default(PRODUCER_HEAP_MB)
      .argParser(integer)
      .env('PRODUCER_HEAP_MB'),
  )
  .action(async (flags) => {
    const {
      heapMb: cap,
      metricsPort: port,
      ...config
    } = validate(producerConfig.extend({ heapMb, metricsPort }), { ...flags, destinations: splitList(flags.destinations) });
    const view = await terminalProgress(config.redisUrl, config.pipeline, config.mode !== 'copy');
    await runUntilStopped(
      (signal) => runProducerThread(config, { heapMb: cap, metricsPort: port, logLines: writeLogLine }, signal),
      async () => view?.stop(),
    );
  });

const consumer = program.command('consumer').description("Apply one destination's batches: consumer <type> --name NAME …");

const consumerCommand = (type: string, description: string) =>
  consumer
    .command(type)
    .description(description)
    .addOption(new Option('--name <name>', "destination name, as given to the producer's --destinations (required)").env('DESTINATION_NAME'))
    .addOption(pipelineOption())
    .addOption(redisOption())
    .addOption(
      new Option('--lock-duration-ms <n>', 'how long a crashed consumer can hold a partition').default(RUNNER_DEFAULTS.lockDurationMs).argParser(integer),
    )
    .addOption(
      new Option('--stalled-interval-ms <n>', "how often crashed consumers' batches are looked for")
        .default(RUNNER_DEFAULTS.stalledIntervalMs)
        .argParser(integer),
    )
    .addOption(
      new Option('--attempts-before-park <n>', 'failed attempts before a partition is reported parked')
        .default(RUNNER_DEFAULTS.attemptsBeforePark)
        .argParser(integer),
    )
    .addOption(
      new Option(
        '--concurrency <n>',
        'batches this process applies at once, across partitions (default: one per partition); below the partition count, more processes apply more at once',
      )
        .env('CONSUMER_CONCURRENCY')
        .argParser(integer),
    )
    .addOption(
      new Option(
        '--register',
        'add this destination to the pipeline if it is new (it gets a copy of every table); without it, a name the pipeline does not know exits 2',
      ).env('REGISTER'),
    )
    .addOption(metricsOption());

// One `consumer <type>` per destination type, with the flags its folder declares.
const destinationTypes = await builtInDestinations();
for (const plugin of destinationTypes) {
  const command = consumerCommand(plugin.type, plugin.description);
  for (const option of plugin.flags()) command.addOption(option);
  command.action(async (flags) => {
    await runConsumer(flags, plugin, validate(plugin.options, plugin.fromFlags?.(flags) ?? flags));
  });
}

async function runConsumer(flags: Record<string, unknown>, plugin: DestinationPlugin, options: Record<string, unknown>): Promise<void> {
  const { metricsPort: port, ...config } = validate(runnerConfig.extend({ metricsPort }), flags);
  limitHeapGrowth();
  const [{ ConsumerRunner }, { connectRedis }, { connectRedisOnce }] = await Promise.all([
    import('../consumers/runner.js'),
    import('../shared/redis.js'),
    import('../shared/redistarget.js'),
  ]);
  // First: a Redis that cannot be reached, or a port that cannot be served, fails before the destination is touched.
  (await connectRedisOnce(config.redisUrl)).disconnect();
  const stopMetrics = await startMetrics(port);
  const redis = connectRedis(config.redisUrl);
  redis.on('error', () => {});
  const destination = await plugin.open(options, { redis, pipeline: config.pipeline, name: config.name });
  const runner = new ConsumerRunner(config, destination);
  await runUntilStopped(
    (signal) => runner.run(signal),
    async () => {
      await stopMetrics();
      await runner.close();
      await destination.close();
      redis.disconnect();
    },
  );
}

program
  .command('run')
  // biome-ignore lint/suspicious/noTemplateCurlyInString: the help names the ${ENV_VAR} syntax of the YAML file
  .description("Run the producer and every destination's consumer in one process, from a YAML file (${ENV_VAR} is expanded).")
  .requiredOption('--config <file>', 'YAML file: pipeline, pgUrl, redisUrl, publication, slot, destinations')
  .action(async (flags) => {
    const file = await (await import('./runfile.js')).readRunFile(flags.config, destinationTypes);
    limitHeapGrowth();
    // The producer runs in this process: its metrics are served beside the consumers'.
    if (file.metricsPort) await import('../producer/prometheus.js');
    const stopMetrics = await startMetrics(file.metricsPort);
    const { startPipeline } = await import('./pipeline.js');
    const view = await terminalProgress(file.redisUrl, file.pipeline, (file.mode ?? 'both') !== 'copy');
    const pipeline = await startPipeline(file, destinationTypes);
    await runUntilStopped(
      (signal) => Promise.race([pipeline.done, new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve()))]),
      async () => {
        await view?.stop();
        await stopMetrics();
        await pipeline.stop();
      },
    );
  });

program
  .command('serve')
  .description(
    'Serve the control API (/api, described at /openapi.json), the status page (/) and the queues (/queues); run the pipelines created through the API, and resume them when it restarts.',
  )
  .addOption(new Option('--host <host>', 'address to listen on; any but loopback needs --token').default('127.0.0.1').env('PGR_HOST'))
  .addOption(new Option('--port <port>', 'port to listen on').default(8080).argParser(integer).env('PGR_PORT'))
  .addOption(new Option('--token <token>', 'bearer token every request must carry (required off loopback)').env('PGR_API_TOKEN'))
  .addOption(redisOption())
  .addOption(new Option('--pg-url <url>', 'Postgres URL for the slots of pipelines this server does not run (their lag, resync, delete)').env('PG_URL'))
  .option(
    '--trust-network',
    "serve off loopback without a token: only where the network in front is trusted (a container whose port is published on the host's loopback)",
  )
  .option('--queues-admin', "let the queue board retry, promote and remove jobs (read-only without it: moving jobs by hand can break a partition's order)")
  .addOption(new Option('--sample-seconds <n>', "how often the page's plots are sampled").default(5).argParser(integer))
  .action(async (flags) => {
    const options = validate(
      z.object({
        redisUrl,
        pgUrl: pgUrl.optional(),
        host: z.string().min(1),
        port: z.number().int().min(0).max(65535, '--port must be 0–65535'),
        token: z.string().min(16, '--token must be at least 16 characters').optional(),
        queuesAdmin: z.boolean().default(false),
        trustNetwork: z.boolean().default(false),
        sampleSeconds: z.number().positive('--sample-seconds must be positive'),
      }),
      flags,
    );
    const { startServer } = await import('../serve/server.js');
    limitHeapGrowth();
    const server = await startServer({ ...options, sampleMs: options.sampleSeconds * 1000, plugins: destinationTypes });
    await runUntilStopped(
      (signal) => new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve())),
      () => server.close(),
    );
  });

program
  .command('resync')
  .description('Copy one table again, consistently, beside the running stream (for every destination, or one); or, with --all, every table under a new slot.')
  .option('--table <schema.name>', 'the table to copy again')
  .option('--all', 'copy every table again for every destination under a new replication slot (after the slot was lost or invalidated)')
  .option('--destination <name>', 'only this destination (with --table)')
  .addOption(pipelineOption())
  .addOption(redisOption())
  .addOption(new Option('--pg-url <url>', 'Postgres URL, to find the table').env('PG_URL'))
  .action(async (flags) => {
    if (!!flags.table === !!flags.all)
      throw new UserError('resync needs either --table schema.name (one table, beside the stream) or --all (every table, under a new slot).');
    if (flags.all) {
      if (flags.destination) throw new UserError('--destination goes with --table: --all copies every table for every destination.');
      const { requestRecopy } = await import('./resync.js');
      process.stdout.write(`${await requestRecopy(validate(z.object({ pipeline: pipelineId, redisUrl }), flags))}\n`);
      return;
    }
    const options = validate(z.object({ pipeline: pipelineId, redisUrl, pgUrl, table: z.string().min(1), destination: destinationName.optional() }), flags);
    const { requestResync } = await import('./resync.js');
    process.stdout.write(`${await requestResync(options)}\n`);
  });

const destinations = program.command('destinations').description('List, add or remove the destinations of a pipeline.');

destinations
  .command('list')
  .description('Each destination with its state, applied LSN and pending batches.')
  .addOption(pipelineOption())
  .addOption(redisOption())
  .action(async (flags) => {
    const { pipelineStatus } = await import('./status.js');
    const status = await pipelineStatus(validate(z.object({ pipeline: pipelineId, redisUrl }), flags));
    for (const destination of status.destinations) {
      process.stdout.write(
        `${destination.name}\t${destination.state}\tapplied ${destination.appliedLsn ?? '-'}\t${destination.pendingBatches} pending\t${destination.consumers} consumers\n`,
      );
    }
  });

destinations
  .command('add')
  .description('Add a destination: the producer copies every table for it beside the stream, then streams to it; start its consumer with the same --name.')
  .argument('<name>', 'the destination')
  .addOption(pipelineOption())
  .addOption(redisOption())
  .action(async (name: string, flags) => {
    const options = validate(z.object({ pipeline: pipelineId, redisUrl, name: destinationName }), { ...flags, name });
    const { addDestination } = await import('./resync.js');
    process.stdout.write(`${await addDestination(options)}\n`);
  });

destinations
  .command('remove')
  .description('Stop feeding a destination: its queues are dropped and it no longer holds back the slot (its data stays where it is).')
  .argument('<name>', 'the destination')
  .addOption(pipelineOption())
  .addOption(redisOption())
  .action(async (name: string, flags) => {
    const options = validate(z.object({ pipeline: pipelineId, redisUrl, name: destinationName }), { ...flags, name });
    const { removeDestination } = await import('./resync.js');
    process.stdout.write(`${await removeDestination(options)}\n`);
  });

program
  .command('pipeline')
  .description('Manage a pipeline as a whole.')
  .command('drop')
  .description(
    "Remove the pipeline: its replication slot and every Redis key of it. The publication and the destinations' data stay. Its producer must be stopped.",
  )
  .addOption(pipelineOption())
  .addOption(redisOption())
  .addOption(new Option('--pg-url <url>', 'Postgres URL, to drop the slot').env('PG_URL'))
  .option('--yes', 'do it (without it, the command says what it would remove)')
  .action(async (flags) => {
    const options = validate(z.object({ pipeline: pipelineId, redisUrl, pgUrl, yes: z.boolean().optional() }), flags);
    const { dropPipeline } = await import('./drop.js');
    process.stdout.write(`${await dropPipeline(options)}\n`);
  });

program
  .command('status')
  .description("Show the slot's confirmed LSN and, per destination, pending batches and state.")
  .addOption(pipelineOption())
  .addOption(redisOption())
  .addOption(new Option('--pg-url <url>', "Postgres URL, to show the slot's confirmed flush LSN").env('PG_URL'))
  .option('--json', 'print JSON')
  .option('--watch', 'show it again every second until stopped (Ctrl-C)')
  .action(async (flags) => {
    const options = validate(z.object({ pipeline: pipelineId, redisUrl, pgUrl: pgUrl.optional() }), flags);
    const { formatStatus, pipelineStatus } = await import('./status.js');
    const show = async () => {
      const status = await pipelineStatus(options);
      return flags.json ? `${JSON.stringify(status, null, 2)}\n` : `${formatStatus(status)}\n`;
    };
    if (!flags.watch) {
      process.stdout.write(await show());
      return;
    }
    await runUntilStopped(
      async (signal) => {
        while (!signal.aborted) {
          const text = await show();
          // On a terminal the screen is redrawn; piped, each status follows the one before.
          process.stdout.write(process.stdout.isTTY ? `\x1b[H\x1b[2J${new Date().toLocaleTimeString()}  ${text}` : `${text}\n`);
          await sleep(1000, undefined, { signal }).catch(() => {});
        }
      },
      async () => {},
    );
  });

/** Serves this process' metrics when a port is given; returns how to stop. */
async function startMetrics(port: number | undefined): Promise<() => Promise<void>> {
  if (!port) return async () => {};
  const { serveMetrics } = await import('../shared/metrics.js');
  return serveMetrics(port);
}

function splitList(text: string | undefined): string[] | undefined {
  return text
    ?.split(',')
    .map((part) => part.trim())
    .filter(Boolean);
}

try {
  await program.parseAsync(process.argv);
  process.exit(0);
} catch (error) {
  if (error instanceof CommanderError) {
    process.exit(error.exitCode === 0 ? 0 : 2);
  }
  exitWithError(error);
}
