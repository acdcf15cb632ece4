#!/usr/bin/env node
import { prestartProducerThread } from '../producer/thread.js';

/**
 * The command's entry. The producer runs on a worker thread whose modules take about as long
 * to load as the CLI's own (a third of a second each on a small machine): for `producer` the
 * thread is started first and loads them while the CLI loads and reads its flags; it starts
 * working when handed its options (producer/thread.ts).
 */
if (process.argv[2] === 'producer') prestartProducerThread();
await import('./program.js');
