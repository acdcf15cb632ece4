import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { FastifyInstance } from 'fastify';

/** The page's own files, beside the sources (they run in the browser as they are), and uPlot's. */
const pageDir = new URL('../../serve/page/', import.meta.url);
const require = createRequire(import.meta.url);

const ASSETS: Record<string, { file: string | URL; type: string }> = {
  '/': { file: new URL('index.html', pageDir), type: 'text/html; charset=utf-8' },
  '/page.js': { file: new URL('page.js', pageDir), type: 'text/javascript; charset=utf-8' },
  '/uplot.js': { file: require.resolve('uplot/dist/uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  '/uplot.css': { file: require.resolve('uplot/dist/uPlot.min.css'), type: 'text/css; charset=utf-8' },
};

/** The status page at `/`: static files that read the JSON API. */
export function servePage(app: FastifyInstance): void {
  for (const [path, { file, type }] of Object.entries(ASSETS)) {
    const body = readFileSync(file);
    app.get(path, { schema: { hide: true } }, async (_request, reply) => reply.type(type).header('cache-control', 'no-cache').send(body));
  }
}
