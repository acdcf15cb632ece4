#!/usr/bin/env node
import { startEarly } from '../producer/thread.js';

// The producer's thread loads its modules while this thread loads the command line's: started
// first, then the CLI. Its imports are kept few, since they come before either.
startEarly(process.argv, process.env);
await import('./program.js');
