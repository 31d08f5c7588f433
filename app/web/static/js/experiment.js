// One experiment, live: charts from the series endpoint (re-fetched on zoom and on new points
// from the SSE stream), summary, config, checkpoint download and cancel.
import { API, getJson, postJson, request, stream } from "./api.js";
import { Chart, columns, pointsFor } from "./chart.js";
import { groupMetrics } from "./metrics.js";
import { setParams } from "./main.js";
import { h, fill, fmt, fmtTime, num, statusBadge, PALETTE, TERMINAL } from "./util.js";

const LIVE_REFRESH_MS = 1000;
const SUMMARY_FIELDS = ["status", "steps", "epochs_completed", "final_test_accuracy",
  "best_val_accuracy", "final_loss", "diverged_at_step", "diverged_metric", "duration_s",
  "samples_per_s", "steps_clipped", "max_grad_norm", "max_grad_norm_step", "mean_clip_fraction",
  "peak_dead_units", "peak_dead_units_layer", "peak_saturated_units", "peak_saturated_units_layer",
  "collapsed_at_step", "collapse_reason", "step_mode"];

export async function experimentView(id, params) {
  const base = `${API}/experiments/${id}`;
  const state = {
    from: params.has("from") ? Number(params.get("from")) : null,
    to: params.has("to") ? Number(params.get("to")) : null,
    log: params.get("log") === "1",
    hidden: new Set((params.get("hide") || "").split(",").filter(Boolean)),
  };
  const abort = new AbortController();
  let experiment = null;
  const known = new Set();
  let lastStep = -1;
  const prefetched = new Map(); // series URL → its pending answer, used once
  const dirty = new Set(); // charts with new points since their last refresh
  let refreshTimer = null;
  let divergence = null; // { step, text }
  const charts = new Map(); // group id → { chart, group, loading, again }
  const registry = window.normlab.charts = {};
  window.normlab.events = 0;

  const head = h("div", { class: "exp-head" });
  const annotation = h("p", { class: "annotation", role: "status", hidden: true });
  const summary = h("table", { class: "summary" });
  const config = h("pre", { class: "config" });
  const grid = h("div", { class: "charts" });
  const picker = h("div", { class: "picker" });
  const rangeText = h("span", { class: "range" });
  const logBox = h("input", { type: "checkbox", id: "log-scale", checked: state.log });
  const reset = h("button", { type: "button", id: "reset-zoom" }, "Reset zoom");
  const message = h("p", { class: "message", role: "status" });
  const node = h("div", { class: "experiment", dataset: { id } },
    head, annotation, message,
    h("div", { class: "toolbar" }, h("label", {}, logBox, " log scale"), reset, rangeText),
    picker, grid,
    h("div", { class: "two" },
      h("section", {}, h("h3", {}, "Summary"), summary),
      h("section", {}, h("h3", {}, "Config"), config)));

  function saveState() {
    const p = new URLSearchParams();
    if (state.from !== null) p.set("from", state.from);
    if (state.to !== null) p.set("to", state.to);
    if (state.log) p.set("log", "1");
    if (state.hidden.size) p.set("hide", [...state.hidden].join(","));
    setParams(p);
    rangeText.textContent = state.from !== null ? `steps ${state.from}–${state.to}` : "all steps";
    reset.disabled = state.from === null;
  }

  function renderHead() {
    const active = !TERMINAL.has(experiment.status);
    fill(head, 
      h("h2", {}, experiment.name, " ", statusBadge(experiment.status)),
      h("p", { class: "meta" }, `id ${experiment.id} · tags: ${experiment.tags.join(", ") || "—"} · created ${fmtTime(experiment.created_at)}`
        + ` · device ${experiment.device || "—"} · worker ${experiment.worker || "—"}`),
      h("div", { class: "actions" },
        active && experiment.status !== "cancelling"
          ? h("button", { type: "button", id: "cancel", onclick: cancel }, "Cancel") : null,
        h("button", { type: "button", id: "download", onclick: download }, "Download checkpoint"),
        h("a", { href: `#/compare?ids=${id}` }, "Compare with others…")),
      experiment.error ? h("p", { class: "error" }, experiment.error) : null);
    const s = experiment.summary || {};
    summary.replaceChildren(...SUMMARY_FIELDS.map((f) => h("tr", {}, h("th", {}, f),
      h("td", { dataset: { field: f } }, fmt(f === "status" ? experiment.status : s[f])))));
    config.textContent = JSON.stringify(experiment.config, null, 2);
  }

  async function cancel() {
    try {
      experiment = await postJson(`experiments/${id}/cancel`);
      renderHead();
    } catch (error) { message.textContent = `Cancel failed: ${error.message}`; }
  }

  async function download() {
    message.textContent = "";
    const response = await request(`${base}/checkpoint`);
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail; } catch { /* not JSON */ }
      message.textContent = `No checkpoint: ${detail}`;
      return;
    }
    const disposition = response.headers.get("content-disposition") || "";
    const found = disposition.match(/filename="?([^";]+)"?/);
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: found ? found[1] : `${id}.safetensors` });
    document.body.append(link);
    link.click();
    link.remove();
    URL.revokeObjectURL(url);
  }

  async function findDivergence() {
    const s = experiment.summary;
    if (!s || s.diverged_at_step === null || s.diverged_at_step === undefined) return;
    const step = s.diverged_at_step;
    const metric = s.diverged_metric || "loss";
    let value = "a non-finite value";
    try {
      const page = await getJson(`experiments/${id}/metrics?names=${encodeURIComponent(metric)}&after_step=${step - 1}&limit=1`);
      if (page.items.length && page.items[0].step === step) value = String(page.items[0].value);
    } catch { /* the annotation still names the step */ }
    divergence = { step, metric, value };
    annotation.hidden = false;
    annotation.textContent = `diverged at step ${step} (${metric} = ${value})`;
    annotation.dataset.step = String(step);
  }

  function seriesOf(name, points, range) {
    const url = `experiments/${id}/metrics/${name.split("/").map(encodeURIComponent).join("/")}/series?points=${points}${range}`;
    const early = prefetched.get(url);
    prefetched.delete(url);
    return early || getJson(url, { signal: abort.signal });
  }

  async function load(entry) {
    if (entry.loading) { entry.again = true; return; }
    entry.loading = true;
    try {
      do {
        entry.again = false;
        const { chart, group } = entry;
        const points = pointsFor(chart.width());
        const range = (state.from !== null ? `&from_step=${state.from}&to_step=${state.to}` : "");
        const answers = await Promise.all(group.names.map((n) => seriesOf(n, points, range)));
        show(entry, answers, points);
      } while (entry.again && !abort.signal.aborted);
    } finally {
      entry.loading = false;
    }
  }

  // Draw a chart from its series answers (one per name of its group, in order).
  function show(entry, answers, points) {
    const { chart, group } = entry;
    const data = {};
    const series = answers.map((answer, i) => {
      const cols = columns(answer.buckets);
      data[group.names[i]] = cols;
      return { label: group.label(group.names[i]), color: PALETTE[i % PALETTE.length], cols };
    });
    const markers = [];
    group.names.forEach((n) => {
      for (const m of data[n].nonfinite) {
        const exact = divergence && n === divergence.metric && m.from <= divergence.step && divergence.step <= m.x;
        markers.push({ x: m.x, name: n, label: exact ? divergence.value : (m.count > 1 ? `non-finite ×${m.count}` : "non-finite") });
      }
    });
    chart.setData(series, markers, divergence ? divergence.step : null);
    registry[group.id] = { names: group.names, points, width: chart.width(), data, markers,
      from: state.from, to: state.to, log: state.log, loads: chart.loads };
  }

  function addChart(group) {
    const chart = new Chart({ id: group.id, title: group.title, log: state.log,
      onSelect: (from, to) => setRange(from, to) });
    const entry = { chart, group, loading: false, again: false };
    charts.set(group.id, entry);
    return entry;
  }

  function setRange(from, to) {
    state.from = from; state.to = to;
    saveState();
    return Promise.all([...charts.values()].map(load));
  }

  function buildCharts() {
    const groups = groupMetrics(known);
    picker.replaceChildren(...groups.map((g) => h("label", {},
      h("input", { type: "checkbox", checked: !state.hidden.has(g.id), dataset: { group: g.id },
        onchange: (e) => { e.target.checked ? state.hidden.delete(g.id) : state.hidden.add(g.id); saveState(); buildCharts(); } }),
      ` ${g.title}`)));
    const fresh = [];
    for (const group of groups) {
      const visible = !state.hidden.has(group.id);
      const existing = charts.get(group.id);
      if (existing && !visible) {
        existing.chart.destroy(); existing.chart.node.remove(); charts.delete(group.id); delete registry[group.id];
      }
      if (existing && visible && existing.group.names.join() !== group.names.join()) {
        existing.group = group; // a new series in this chart (the epoch metrics, a layer)
        fresh.push(existing);
      }
      if (!visible || charts.has(group.id)) continue;
      fresh.push(addChart(group));
    }
    // Keep display order.
    grid.replaceChildren(...groups.filter((g) => charts.has(g.id)).map((g) => charts.get(g.id).chart.node));
    return Promise.all(fresh.map(load));
  }

  function onEvent(kind, data) {
    window.normlab.events += 1;
    node.dataset.events = String(window.normlab.events);
    if (kind === "status" || kind === "end") {
      const { status } = JSON.parse(data);
      if (status === "deleted") { message.textContent = "This experiment was deleted."; return; }
      if (status !== experiment.status || kind === "end") {
        getJson(`experiments/${id}`).then(async (e) => {
          experiment = e; renderHead();
          if (TERMINAL.has(e.status)) {
            clearTimeout(refreshTimer); // the final refresh below covers what was pending
            refreshTimer = null;
            dirty.clear();
            await findDivergence();
            await Promise.all([...charts.values()].map(load));
            node.dataset.final = "true";
          }
        }).catch((error) => { message.textContent = error.message; });
      }
      return;
    }
    if (kind !== "metrics") return;
    const points = JSON.parse(data);
    const touched = new Set(points.map((p) => p.name));
    let added = false;
    for (const p of points) {
      lastStep = Math.max(lastStep, p.step);
      if (!known.has(p.name)) { known.add(p.name); added = true; }
    }
    window.normlab.lastStep = lastStep;
    if (added) buildCharts();
    // A zoomed view keeps its range; the full view follows the run.
    if (state.from !== null) return;
    for (const entry of charts.values()) {
      if (entry.group.names.some((n) => touched.has(n))) dirty.add(entry);
    }
    // At most one refresh a second: the stream may bring points every poll (0.5 s), and each
    // refresh asks for every series of the charts it touches.
    if (dirty.size && refreshTimer === null) {
      refreshTimer = setTimeout(() => {
        refreshTimer = null;
        const due = [...dirty];
        dirty.clear();
        due.forEach(load);
      }, LIVE_REFRESH_MS);
    }
  }

  logBox.addEventListener("change", () => {
    state.log = logBox.checked; saveState();
    for (const { chart } of charts.values()) chart.setLog(state.log);
  });
  reset.addEventListener("click", () => setRange(null, null));

  async function start() {
    // Every run writes `loss`: ask for its series at once, at the width the first chart will
    // have, before the run's metric names are known (on a long run, counting them is slow).
    const probe = new Chart({ id: "probe", title: "" });
    grid.append(probe.node);
    const range = (state.from !== null ? `&from_step=${state.from}&to_step=${state.to}` : "");
    const points = pointsFor(probe.width());
    probe.node.remove();
    const loss = seriesOf("loss", points, range);
    loss.catch(() => {}); // handled where it is used; unused, it is dropped below
    prefetched.set(`experiments/${id}/metrics/loss/series?points=${points}${range}`, loss);
    // Drawn as soon as it comes, if the names are not known yet; completed when they are.
    loss.then((answer) => {
      if (charts.size || !answer.buckets.length || state.hidden.has("loss") || abort.signal.aborted) return;
      const entry = addChart({ id: "loss", title: "Loss", names: ["loss"], label: (n) => n });
      grid.prepend(entry.chart.node);
      show(entry, [answer], points);
    }, () => {});
    // The names (a count over every point of the run) only after the loss answer: run beside
    // it, they slow the first chart down on a long run more than they gain.
    const listNames = () => getJson(`experiments/${id}/metrics/names`);
    let names;
    [experiment, names] = await Promise.all([getJson(`experiments/${id}`),
      loss.then(listNames, listNames)]);
    names.forEach((n) => known.add(n.name));
    lastStep = names.reduce((m, n) => Math.max(m, n.last_step), -1);
    window.normlab.lastStep = lastStep;
    renderHead();
    saveState();
    await findDivergence();
    await buildCharts();
    prefetched.clear(); // later charts (new points, a new width) ask afresh
    if (TERMINAL.has(experiment.status)) node.dataset.final = "true";
    else stream(`${base}/stream`, lastStep, onEvent, abort.signal);
  }
  return {
    name: "experiment", node, start,
    dispose() { abort.abort(); clearTimeout(refreshTimer); for (const { chart } of charts.values()) chart.destroy(); },
  };
}
