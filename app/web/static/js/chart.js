// One uPlot chart of bucketed series: each series is a line (the bucket mean) inside its min–max
// band, so a one-step spike stays visible at any zoom. Non-finite points (NaN, ±Infinity) are
// drawn as red markers at the top; a vertical line marks where a run diverged.
import { h, fmt, withAlpha } from "./util.js";

const HEIGHT = 220;

// Short tick labels: exponents for large or tiny values, so they fit the axis.
function tick(v) {
  if (v === null || v === undefined) return "";
  const abs = Math.abs(v);
  return abs !== 0 && (abs >= 1e4 || abs < 1e-3) ? v.toExponential(1) : String(+v.toPrecision(4));
}

// Buckets of the series endpoint → the columns a chart draws (x = the bucket's last step).
export function columns(buckets) {
  const x = [], mean = [], min = [], max = [], nonfinite = [];
  for (const b of buckets) {
    x.push(b.step_end);
    mean.push(b.mean);
    min.push(b.min);
    max.push(b.max);
    if (b.nonfinite_count > 0) nonfinite.push({ x: b.step_end, from: b.step_start, count: b.nonfinite_count });
  }
  return { x, mean, min, max, nonfinite };
}

// Pixels of plot width → how many buckets to ask for: one per pixel, never more than the API's cap.
export function pointsFor(width) {
  return Math.max(20, Math.min(5000, Math.floor(width)));
}

export class Chart {
  // spec: { id, title, log, clientZoom, onSelect(from, to) }
  constructor(spec) {
    this.spec = spec;
    this.uplot = null;
    this.series = []; // [{ label, color, cols }]
    this.markers = [];
    this.divergedAt = null;
    this.legend = h("div", { class: "legend" });
    this.plot = h("div", { class: "plot" });
    this.note = h("div", { class: "chart-note" });
    this.node = h("section", { class: "chart", dataset: { chart: spec.id, loads: "0" } },
      h("h3", {}, spec.title), this.legend, this.plot, this.note);
    this.loads = 0;
  }

  width() {
    return Math.max(200, (this.node.clientWidth || this.node.parentElement?.clientWidth || 600) - 16);
  }

  // series: [{ label, color, cols }]; markers: [{ x, label }]
  setData(series, markers = [], divergedAt = null) {
    this.series = series;
    this.markers = markers;
    this.divergedAt = divergedAt;
    this.loads += 1;
    this.draw();
    // When the page first showed data (bench/dashboard.py reads it).
    if (window.normlab.firstChartMs === undefined) window.normlab.firstChartMs = performance.now();
    this.node.dataset.loads = String(this.loads);
    this.node.dataset.markers = String(markers.length);
    // The last step drawn: tests wait on it to see a live point arrive.
    this.node.dataset.lastStep = String(Math.max(-1, ...series.map((s) => (s.cols.x.length ? s.cols.x[s.cols.x.length - 1] : -1))));
  }

  setLog(log) {
    this.spec.log = log;
    this.draw();
  }

  draw() {
    const log = !!this.spec.log;
    const keep = (v) => (v === null || v === undefined || (log && v <= 0) ? null : v);
    const tables = this.series.map((s) => [s.cols.x, s.cols.mean.map(keep), s.cols.min.map(keep),
      s.cols.max.map(keep)]);
    const any = tables.some((t) => t[0].length > 0);
    this.note.textContent = any ? "" : "no points yet";
    // Alignment gaps (undefined) are spanned; a null (a non-finite bucket) breaks the line.
    const data = any ? uPlot.join(tables.filter((t) => t[0].length > 0))
      : [[], ...this.series.flatMap(() => [[], [], []])];
    const shown = any ? this.series.filter((s) => s.cols.x.length > 0) : this.series;
    const uSeries = [{ label: "step" }];
    const bands = [];
    shown.forEach((s, i) => {
      const base = 1 + 3 * i;
      uSeries.push({ label: s.label, stroke: s.color, width: 1.5 });
      uSeries.push({ label: `${s.label} min`, stroke: withAlpha(s.color, 0.35), width: 1,
        points: { show: false } });
      uSeries.push({ label: `${s.label} max`, stroke: withAlpha(s.color, 0.35), width: 1,
        points: { show: false } });
      bands.push({ series: [base + 2, base + 1], fill: withAlpha(s.color, 0.15) });
    });
    this.renderLegend(shown);
    const opts = {
      width: this.width(),
      height: HEIGHT,
      legend: { show: false },
      cursor: { drag: { x: true, y: false, setScale: !!this.spec.clientZoom } },
      scales: { x: { time: false }, y: log ? { distr: 3, log: 10 } : {} },
      axes: [{ label: "step", size: 40 }, { size: 64, values: (u, ticks) => ticks.map(tick) }],
      series: uSeries,
      bands,
      hooks: {
        draw: [(u) => this.drawOverlay(u)],
        setSelect: [(u) => this.selected(u)],
        setCursor: [(u) => this.hover(u, shown)],
      },
    };
    if (this.uplot) this.uplot.destroy();
    this.uplot = new uPlot(opts, data, this.plot);
  }

  renderLegend(shown) {
    this.legendValues = [];
    this.legend.replaceChildren(...shown.map((s) => {
      const value = h("span", { class: "legend-value" });
      this.legendValues.push(value);
      return h("span", { class: "legend-item" },
        h("i", { class: "swatch", style: undefined, dataset: { color: s.color } }),
        h("span", { class: "legend-label" }, s.label), value);
    }));
    // Swatch colours through the DOM API (the CSP forbids inline style attributes in markup).
    this.legend.querySelectorAll(".swatch").forEach((el) => { el.style.background = el.dataset.color; });
  }

  hover(u, shown) {
    const idx = u.cursor.idx;
    shown.forEach((s, i) => {
      const v = idx === null || idx === undefined ? null : u.data[1 + 3 * i][idx];
      this.legendValues[i].textContent = v === null || v === undefined ? "" : ` ${fmt(v)}`;
    });
  }

  selected(u) {
    if (this.spec.clientZoom || u.select.width < 3) return;
    const from = Math.max(0, Math.floor(u.posToVal(u.select.left, "x")));
    const to = Math.ceil(u.posToVal(u.select.left + u.select.width, "x"));
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (this.spec.onSelect && to > from) this.spec.onSelect(from, to);
  }

  drawOverlay(u) {
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    const px = (x) => u.valToPos(x, "x", true);
    ctx.save();
    if (this.divergedAt !== null) {
      const x = px(this.divergedAt);
      if (x >= left && x <= left + width) {
        ctx.strokeStyle = "#b00020";
        ctx.setLineDash([6, 4]);
        ctx.lineWidth = 1.5 * devicePixelRatio;
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
        ctx.setLineDash([]);
      }
    }
    ctx.fillStyle = "#b00020";
    ctx.font = `${11 * devicePixelRatio}px sans-serif`;
    const size = 6 * devicePixelRatio;
    for (const m of this.markers) {
      const x = px(m.x);
      if (x < left - 1 || x > left + width + 1) continue;
      ctx.beginPath();
      ctx.moveTo(x - size, top); ctx.lineTo(x + size, top); ctx.lineTo(x, top + 1.6 * size);
      ctx.closePath(); ctx.fill();
      ctx.fillText(m.label, Math.min(x + size + 2, left + width - 40 * devicePixelRatio), top + 1.6 * size);
    }
    ctx.restore();
  }

  destroy() {
    if (this.uplot) this.uplot.destroy();
    this.uplot = null;
  }
}
