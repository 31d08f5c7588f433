// Up to 20 runs on one step axis, each labelled by how its config differs from the first, with
// their summaries (and the differences from the first) side by side.
import { getJson } from "./api.js";
import { Chart, columns, pointsFor } from "./chart.js";
import { setParams } from "./main.js";
import { h, fmt, PALETTE, statusBadge } from "./util.js";

const FIELDS = ["steps", "final_test_accuracy", "best_val_accuracy", "final_loss", "diverged_at_step",
  "duration_s", "samples_per_s", "max_grad_norm", "mean_clip_fraction"];

// The legend label of a run: its config differences from the first run (the name left out).
export function diffLabel(diff) {
  return Object.entries(diff).filter(([k]) => k !== "name").map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
}

export async function compareView(params) {
  const ids = (params.get("ids") || "").split(",").filter(Boolean);
  const state = { names: (params.get("names") || "loss,test_accuracy").split(",").filter(Boolean),
    log: params.get("log") === "1" };
  const idsInput = h("input", { id: "compare-ids", size: 80, value: ids.join(","), placeholder: "experiment ids, comma-separated" });
  const form = h("form", { class: "filters", id: "compare-form" }, idsInput, h("button", { type: "submit" }, "Compare"));
  form.addEventListener("submit", (e) => { e.preventDefault(); location.hash = `#/compare?ids=${idsInput.value.replace(/\s+/g, "")}`; });
  const node = h("div", { class: "compare" }, h("h2", {}, "Compare"), form);
  if (!ids.length) {
    node.append(h("p", {}, "Pick up to 20 runs in the ", h("a", { href: "#/" }, "experiments list"), " or paste their ids."));
    return { name: "compare", node };
  }
  const picker = h("div", { class: "picker" });
  const logBox = h("input", { type: "checkbox", id: "log-scale", checked: state.log });
  const grid = h("div", { class: "charts" });
  const table = h("table", { class: "summary side" });
  node.append(h("div", { class: "toolbar" }, h("label", {}, logBox, " log scale"),
    h("span", { class: "hint" }, "drag to zoom, double-click to reset")), picker, grid,
    h("h3", {}, "Summaries (Δ against the first run)"), table);
  const charts = [];
  window.normlab.charts = {};
  window.normlab.compare = null;

  function save() {
    const p = new URLSearchParams({ ids: ids.join(","), names: state.names.join(",") });
    if (state.log) p.set("log", "1");
    setParams(p);
  }

  async function start() {
    // The chart data, the summaries and the metric names are asked for at once.
    const drawn = draw();
    const summaries = Promise.all(ids.map((id) => getJson(`experiments/${id}`)));
    const known = await getJson(`experiments/${ids[0]}/metrics/names`);
    const available = [...new Set([...known.map((n) => n.name), ...state.names])].sort();
    picker.replaceChildren(...available.map((n) => h("label", {}, h("input", {
      type: "checkbox", checked: state.names.includes(n), dataset: { metric: n },
      onchange: (e) => {
        state.names = e.target.checked ? [...state.names, n] : state.names.filter((x) => x !== n);
        save(); draw();
      } }), ` ${n}`)));
    const [labels, experiments] = await Promise.all([drawn, summaries]);
    renderTable(experiments, labels);
    save();
  }

  async function draw() {
    charts.splice(0).forEach((c) => c.destroy());
    grid.replaceChildren();
    if (!state.names.length) return [];
    const probe = new Chart({ id: "probe", title: "" });
    grid.append(probe.node);
    const points = pointsFor(probe.width());
    probe.node.remove();
    // One request per metric, in parallel (the server answers them in separate processes);
    // each chart gets its own step range.
    const answers = await Promise.all(state.names.map((name) => getJson(
      `compare?ids=${ids.join(",")}&names=${encodeURIComponent(name)}&points=${points}`)));
    const answer = answers[0];
    const seen = new Set();
    const labels = answer.experiments.map((e, i) => {
      let label = i === 0 ? `${e.name} (reference)` : (diffLabel(e.config_diff) || `${e.name} (same config)`);
      if (seen.has(label)) label = `${label} [${e.id.slice(0, 8)}]`;
      seen.add(label);
      return label;
    });
    const data = {};
    for (const [k, name] of state.names.entries()) {
      const chart = new Chart({ id: name, title: name, log: state.log, clientZoom: true });
      grid.append(chart.node);
      charts.push(chart);
      const series = answers[k].experiments.map((e, i) => ({ label: labels[i], color: PALETTE[i % PALETTE.length],
        cols: columns(e.series[name] || []) }));
      data[name] = series.map((s) => s.cols);
      const markers = series.flatMap((s) => s.cols.nonfinite.map((m) => ({ x: m.x, label: "non-finite" })));
      chart.setData(series, markers);
      window.normlab.charts[name] = { names: [name], points, width: chart.width(), data: data[name], markers };
    }
    window.normlab.compareDrawnMs = performance.now();
    window.normlab.compare = { labels, ids: answer.experiments.map((e) => e.id), diffs: answer.experiments.map((e) => e.config_diff), points };
    return labels;
  }

  function renderTable(experiments, labels) {
    const first = experiments[0].summary || {};
    table.replaceChildren(
      h("thead", {}, h("tr", {}, h("th", {}, ""), ...experiments.map((e, i) => h("th", {},
        h("a", { href: `#/e/${e.id}` }, e.name), h("div", { class: "hint" }, labels[i] || ""))))),
      h("tbody", {},
        h("tr", {}, h("th", {}, "status"), ...experiments.map((e) => h("td", {}, statusBadge(e.status)))),
        ...FIELDS.map((f) => h("tr", {}, h("th", {}, f), ...experiments.map((e, i) => {
          const v = (e.summary || {})[f];
          const d = i > 0 && typeof v === "number" && typeof first[f] === "number" ? v - first[f] : null;
          return h("td", { dataset: { field: f } }, fmt(v), d !== null ? h("span", { class: "delta" }, ` (Δ ${d >= 0 ? "+" : ""}${fmt(d)})`) : null);
        })))));
  }

  logBox.addEventListener("change", () => { state.log = logBox.checked; save(); charts.forEach((c) => c.setLog(state.log)); });
  return { name: "compare", node, start, dispose() { charts.forEach((c) => c.destroy()); } };
}
