// Live charts per model, from the summary's cumulative counters (modelbay.dashboard.summary):
// two summaries in a row give the rates over the interval between them, as Prometheus' rate()
// and histogram_quantile() do, every served version of the model added together.

import { h, fill } from "./dom.js";

export const WINDOW_POINTS = 180; // points kept per model: 6 minutes at one summary each 2 s

/** The `q` quantile (0..1) of a histogram, in its bounds' unit, or null when it holds nothing.
 *  buckets: [[upper bound or null for +Inf, cumulative count], ...] sorted by bound. Linear
 *  interpolation inside the bucket the rank falls in, from 0 for the first; a rank past the last
 *  finite bound gives that bound (Prometheus' histogram_quantile). */
export function quantile(q, buckets) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (bound === null) return lower;
      if (count === below) return bound;
      return lower + ((bound - lower) * (rank - below)) / (count - below);
    }
    if (bound !== null) lower = bound;
    below = count;
  }
  return lower;
}

/** What happened to one version between two summaries: counters `now` minus `before` (a version
 *  loaded again restarts its counters: then `now` counts from zero). */
export function versionDelta(now, before) {
  const reset = !before || now.requests < before.requests || now.batches < before.batches;
  const base = reset ? null : before;
  const minus = (name) => now[name] - (base ? base[name] : 0);
  const earlier = new Map((base ? base.latency_buckets : []).map(([bound, count]) => [bound, count]));
  return {
    requests: minus("requests"),
    errors: minus("errors"),
    batches: minus("batches"),
    batch_rows: minus("batch_rows"),
    cache_hits: minus("cache_hits"),
    cache_misses: minus("cache_misses"),
    queue_depth: now.queue_depth,
    latency_buckets: now.latency_buckets.map(([bound, count]) => [bound, count - (earlier.get(bound) || 0)]),
  };
}

/** Several versions' deltas added: one model's. */
export function addDeltas(deltas) {
  const sum = { requests: 0, errors: 0, batches: 0, batch_rows: 0, cache_hits: 0, cache_misses: 0, queue_depth: 0 };
  const buckets = new Map();
  for (const delta of deltas) {
    for (const name of Object.keys(sum)) sum[name] += delta[name];
    for (const [bound, count] of delta.latency_buckets) buckets.set(bound, (buckets.get(bound) || 0) + count);
  }
  const bounds = [...buckets.keys()].sort((a, b) => (a === null) - (b === null) || a - b);
  sum.latency_buckets = bounds.map((bound) => [bound, buckets.get(bound)]);
  return sum;
}

/** The chart values of one model over `seconds`: rates per second, latency in ms, null where
 *  the interval had nothing to measure (no request: no latency; no batch: no batch size). */
export function point(delta, seconds) {
  const lookups = delta.cache_hits + delta.cache_misses;
  const ms = (q) => {
    const value = quantile(q, delta.latency_buckets);
    return value === null ? null : value * 1000;
  };
  return {
    rps: delta.requests / seconds,
    p50: ms(0.5),
    p99: ms(0.99),
    batch: delta.batches > 0 ? delta.batch_rows / delta.batches : null,
    queue: delta.queue_depth,
    hit: lookups > 0 ? (100 * delta.cache_hits) / lookups : null,
    errors: delta.errors / seconds,
  };
}

const CHARTS = [
  { title: "requests / s", series: [["rps", "req/s", "#2b6cb0"]] },
  { title: "latency (ms)", series: [["p50", "p50", "#2f855a"], ["p99", "p99", "#c05621"]] },
  { title: "mean batch size (rows)", series: [["batch", "rows", "#6b46c1"]] },
  { title: "queue depth (requests)", series: [["queue", "waiting", "#b7791f"]] },
  { title: "cache hit rate (%)", series: [["hit", "hit %", "#2c7a7b"]] },
  { title: "errors / s", series: [["errors", "errors/s", "#c53030"]] },
];

const CHART_HEIGHT = 170;

function chartWidth(cell) {
  return Math.max(240, cell.clientWidth - 10);
}

/** The history of every model's chart values and totals, fed one summary at a time. */
export class History {
  constructor() {
    this.previous = null;
    this.models = new Map(); // name -> {t: [], rps: [], ...}
    this.totals = new Map(); // name -> {requests, errors} since the server started
  }

  /** Take a new summary: one point per model it serves. */
  add(summary) {
    const before = this.previous;
    this.previous = summary;
    for (const model of summary.models) {
      const totals = { requests: 0, errors: 0 };
      for (const version of model.versions) {
        totals.requests += version.counters.requests;
        totals.errors += version.counters.errors;
      }
      this.totals.set(model.name, totals);
    }
    if (!before || summary.time_s <= before.time_s) return;
    const seconds = summary.time_s - before.time_s;
    const earlier = new Map();
    for (const model of before.models) {
      for (const version of model.versions) earlier.set(`${model.name}\u0000${version.version}`, version.counters);
    }
    for (const model of summary.models) {
      const deltas = model.versions.map((v) => versionDelta(v.counters, earlier.get(`${model.name}\u0000${v.version}`)));
      const values = point(addDeltas(deltas), seconds);
      if (!this.models.has(model.name)) this.models.set(model.name, { t: [] });
      const history = this.models.get(model.name);
      history.t.push(summary.time_s);
      for (const [name, value] of Object.entries(values)) (history[name] ||= []).push(value);
      if (history.t.length > WINDOW_POINTS) for (const list of Object.values(history)) list.shift();
    }
  }
}

/** The six charts of one model in `container` (uPlot, vendored); `update` redraws them from `history`. */
export class ModelCharts {
  constructor(container, model, history) {
    this.model = model;
    this.history = history;
    this.plots = [];
    this.totals = h("p", { class: "totals", id: "metric-totals" });
    const grid = h("div", { class: "chart-grid" });
    fill(container, this.totals, grid);
    for (const chart of CHARTS) {
      const cell = h("div", { class: "chart" });
      grid.append(cell);
      const options = {
        title: chart.title,
        width: chartWidth(cell),
        height: CHART_HEIGHT,
        scales: { x: { time: true } },
        series: [{}, ...chart.series.map(([, label, stroke]) => ({ label, stroke, width: 2, spanGaps: false, points: { show: false } }))],
        axes: [{}, { size: 52 }],
      };
      this.plots.push({ chart, cell, plot: new uPlot(options, [[], ...chart.series.map(() => [])], cell) });
    }
    this.update();
  }

  /** Fit the charts to their cells again (the window was resized). */
  resize() {
    for (const { cell, plot } of this.plots) plot.setSize({ width: chartWidth(cell), height: CHART_HEIGHT });
  }

  update() {
    const totals = this.history.totals.get(this.model) || { requests: 0, errors: 0 };
    this.totals.textContent = `since the server started: ${totals.requests} requests, ${totals.errors} errors`;
    const history = this.history.models.get(this.model);
    if (!history) return;
    for (const { chart, plot } of this.plots) {
      plot.setData([history.t, ...chart.series.map(([name]) => history[name])]);
    }
  }

  destroy() {
    for (const { plot } of this.plots) plot.destroy();
    this.plots = [];
  }
}
