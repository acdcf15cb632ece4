// After a build, make `npx pg-replicate` work inside this checkout (npm links the bins of
// dependencies, not the package's own) and mark the CLI executable.
import { chmodSync, mkdirSync, rmSync, symlinkSync } from 'node:fs';

chmodSync('dist/cli/index.js', 0o755);
mkdirSync('node_modules/.bin', { recursive: true });
rmSync('node_modules/.bin/pg-replicate', { force: true });
symlinkSync('../../dist/cli/index.js', 'node_modules/.bin/pg-replicate');
