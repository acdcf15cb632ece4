import { createServer, type Server } from 'node:http';
import { collectDefaultMetrics, register } from 'prom-client';
import { errorMessage, UserError } from './errors.js';
import { log } from './log.js';

/**
 * Serves this thread's Prometheus registry at http://…:PORT/metrics: the metrics of the modules
 * loaded here (producer/metrics, consumers/metrics) and Node's own (memory, CPU, event loop).
 * Resolves once listening; returns a function that stops it.
 */
export async function serveMetrics(port: number): Promise<() => Promise<void>> {
  collectDefaultMetrics();
  const server: Server = createServer((request, response) => {
    if (request.method !== 'GET' || new URL(request.url ?? '/', 'http://metrics').pathname !== '/metrics') {
      response.writeHead(404, { 'Content-Type': 'text/plain' }).end('Not found: the metrics are at /metrics\n');
      return;
    }
    register.metrics().then(
      (text) => response.writeHead(200, { 'Content-Type': register.contentType }).end(text),
      (error) => response.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${errorMessage(error)}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: Error & { code?: string }) =>
      reject(
        error.code === 'EADDRINUSE' || error.code === 'EACCES'
          ? new UserError(
              `--metrics-port ${port} cannot be used (${error.code === 'EADDRINUSE' ? 'another process listens on it' : 'not allowed'}): choose another port, or leave --metrics-port out`,
            )
          : error,
      ),
    );
    server.listen(port, () => resolve());
  });
  log.info({ port }, 'serving Prometheus metrics at /metrics');
  return () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      // A scraper keeps its connection open between scrapes.
      server.closeAllConnections();
    });
}
