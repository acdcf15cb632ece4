// The status page: every two seconds, reads what the server last sampled of each pipeline
// from the JSON API and draws it. Runs in the browser as it is (no build step); uPlot draws
// the plots.
/* global uPlot */

const REFRESH_MS = 2000;
/** Per pipeline, its plots, kept across refreshes (redrawn only when their series change). */
const plots = new Map();

async function api(path) {
  const response = await fetch(path, { credentials: 'same-origin' });
  if (response.status === 401) {
    document.getElementById('login').style.display = 'block';
    throw new Error('unauthorised');
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

const number = new Intl.NumberFormat();
const bytes = (value) => {
  if (value === null || value === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
};
const duration = (seconds) => {
  if (!Number.isFinite(seconds)) return '–';
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
};
const badge = (state) => element('span', { class: `state state-${state}` }, state);

/** A plot of the history: x is time, one line per series; recreated when its series change. */
function drawPlot(container, key, title, series, points, format = (value) => number.format(value)) {
  const data = [points.map((point) => point.t / 1000), ...series.map((each) => points.map(each.value))];
  const names = series.map((each) => each.label).join('\n');
  let plot = plots.get(key);
  if (!plot || plot.names !== names || !container.contains(plot.chart.root)) {
    plot?.chart.destroy();
    const chart = new uPlot(
      {
        title,
        width: 500,
        height: 200,
        series: [{}, ...series.map((each, index) => ({ label: each.label, stroke: `hsl(${(index * 137) % 360} 65% 45%)`, scale: each.scale ?? 'y' }))],
        axes: [
          {},
          { scale: 'y', size: 80, values: (_, ticks) => ticks.map(format) },
          ...(series.some((each) => each.scale === 's')
            ? [{ scale: 's', side: 1, grid: { show: false }, values: (_, ticks) => ticks.map((tick) => `${tick} s`) }]
            : []),
        ],
      },
      data,
      container,
    );
    plot = { chart, names };
    plots.set(key, plot);
  } else {
    plot.chart.setData(data);
  }
  container.dataset.points = String(points.length);
}

function copySection(status) {
  const rows = [];
  for (const table of status.copyProgress) {
    const done = status.copy === 'done';
    const estimate = Math.max(table.estimatedRows ?? 0, table.appliedRows, 1);
    const percent = done ? 100 : Math.min(99.9, (100 * table.appliedRows) / estimate);
    const eta = done ? 'done' : table.rowsPerSecond > 0 ? `ETA ${duration((estimate - table.appliedRows) / table.rowsPerSecond)}` : '';
    rows.push(
      element(
        'tr',
        { 'data-table': table.table },
        element('td', {}, table.table),
        element('td', {}, element('progress', { max: '100', value: String(percent) })),
        element('td', { class: 'percent' }, `${percent.toFixed(percent === 100 ? 0 : 1)} %`),
        element('td', {}, `${number.format(table.appliedRows)} of ~${number.format(estimate)} rows, ${number.format(table.rowsPerSecond)} rows/s`),
        element('td', {}, eta),
      ),
    );
  }
  for (const sync of status.tableSyncs) {
    const percent = sync.rangesTotal ? (100 * sync.rangesDone) / sync.rangesTotal : 0;
    rows.push(
      element(
        'tr',
        { 'data-table': sync.table },
        element('td', {}, `${sync.table} (${sync.reason})`),
        element('td', {}, element('progress', { max: '100', value: String(percent) })),
        element('td', { class: 'percent' }, `${percent.toFixed(1)} %`),
        element('td', {}, `${number.format(sync.rows)} rows enqueued`),
        element('td', {}, ''),
      ),
    );
  }
  return rows.length > 0 ? element('table', { class: 'copies' }, element('caption', {}, `copy: ${status.copy}`), ...rows) : element('div');
}

function destinationsSection(status) {
  const rows = [];
  for (const destination of status.destinations) {
    rows.push(
      element(
        'tr',
        { 'data-destination': destination.name, 'data-state': destination.state },
        element('td', {}, destination.name),
        element('td', {}, badge(destination.state)),
        element('td', {}, `applied up to ${destination.appliedLsn ?? '–'}`),
        element('td', {}, `${number.format(destination.pendingBatches)} batches pending`),
        element('td', {}, `${destination.consumers} consumer${destination.consumers === 1 ? '' : 's'}`),
      ),
    );
    for (const failing of destination.errors) {
      rows.push(
        element(
          'tr',
          { class: 'partition', 'data-destination': destination.name, 'data-partition': String(failing.partition) },
          element('td', {}, `partition ${failing.partition}`),
          element('td', {}, badge(destination.state === 'parked' ? 'parked' : 'retrying')),
          element('td', { class: 'error', colspan: '3' }, `attempt ${failing.attempts} since ${failing.since}: ${failing.error}`),
        ),
      );
    }
    for (const [table, quarantine] of Object.entries(destination.quarantined ?? {})) {
      rows.push(
        element(
          'tr',
          { class: 'quarantine' },
          element('td', {}, table),
          element('td', {}, badge('parked')),
          element('td', { class: 'error', colspan: '3' }, `quarantined: ${quarantine.error}`),
        ),
      );
    }
  }
  return element('table', { class: 'destinations' }, ...rows);
}

function renderPipeline(section, id, run, status, points) {
  const heading = element('h2', {}, id, ' ');
  if (run) heading.append(badge(run.state));
  if (status?.paused) heading.append(' ', badge('paused'));
  const facts = status
    ? `slot ${status.slot}${status.slotWalStatus ? ` (${status.slotWalStatus})` : ''} · lag ${bytes(status.slotLagBytes)}${typeof status.slotLagSeconds === 'number' ? `, ${status.slotLagSeconds.toFixed(1)} s` : ''}`
    : 'starting';
  const lag = section.querySelector('[data-plot=lag]') ?? element('div', { 'data-plot': 'lag' });
  const throughput = section.querySelector('[data-plot=throughput]') ?? element('div', { 'data-plot': 'throughput' });
  section.replaceChildren(
    heading,
    element('div', { class: 'facts' }, facts),
    ...(run?.error ? [element('div', { class: 'error' }, run.error)] : []),
    element('div', { class: 'plots' }, lag, throughput),
    ...(status ? [copySection(status), destinationsSection(status)] : []),
  );
  drawPlot(
    lag,
    `${id}:lag`,
    'lag',
    [
      { label: 'bytes', value: (point) => point.lagBytes },
      { label: 'seconds', value: (point) => point.lagSeconds, scale: 's' },
    ],
    points,
    bytes,
  );
  const names = [...new Set(points.flatMap((point) => Object.keys(point.destinations)))].sort();
  drawPlot(
    throughput,
    `${id}:throughput`,
    'applied per second',
    names.flatMap((name) => [
      { label: `${name} changes/s`, value: (point) => point.destinations[name]?.changesPerSecond ?? null },
      { label: `${name} rows/s`, value: (point) => point.destinations[name]?.rowsPerSecond ?? null },
    ]),
    points,
  );
}

async function refresh() {
  const { pipelines } = await api('/api/pipelines');
  const container = document.getElementById('pipelines');
  document.getElementById('empty').hidden = pipelines.length > 0;
  const seen = new Set();
  for (const { id, run } of pipelines) {
    seen.add(id);
    // What the server sampled: a page left open costs Postgres and Redis nothing.
    const history = await api(`/api/pipelines/${encodeURIComponent(id)}/history`);
    let section = container.querySelector(`section[data-pipeline="${CSS.escape(id)}"]`);
    if (!section) {
      section = element('section', { class: 'pipeline', 'data-pipeline': id });
      container.append(section);
    }
    renderPipeline(section, id, run, history.sampled, history.points);
  }
  for (const section of container.querySelectorAll('section[data-pipeline]')) if (!seen.has(section.dataset.pipeline)) section.remove();
  document.getElementById('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
}

document.getElementById('login').addEventListener('submit', (event) => {
  event.preventDefault();
  // biome-ignore lint/suspicious/noDocumentCookie: one cookie, set once; the Cookie Store API is not in every browser
  document.cookie = `pgr_token=${encodeURIComponent(document.getElementById('token').value)}; path=/; SameSite=Strict`;
  document.getElementById('login').style.display = 'none';
});

async function loop() {
  await refresh().catch((error) => {
    document.getElementById('updated').textContent = `not updated: ${error.message}`;
  });
  setTimeout(loop, REFRESH_MS);
}
loop();
