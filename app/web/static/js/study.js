// Studies: the list, and one study's progress (live over SSE), an effect card per contrast,
// per-cell mean ± 95% CI curves across seeds, the cells table and the results CSV.
import { API, getJson, request, stream } from "./api.js";
import { Chart, pointsFor } from "./chart.js";
import { setParams } from "./main.js";
import { h, fill, fmt, fmtTime, PALETTE } from "./util.js";

const PAGE = 25;

function progressText(p) {
  const parts = Object.entries(p.by_status || {}).map(([s, n]) => `${n} ${s}`);
  return `${p.finished}/${p.total} finished${parts.length ? ` (${parts.join(", ")})` : ""}`;
}

const levelsText = (levels) => Object.entries(levels).map(([k, v]) => `${k}=${v}`).join(", ");
const ciText = (ci) => (ci ? `[${fmt(ci[0])}, ${fmt(ci[1])}]` : "—");

export async function studyListView(params) {
  const cursor = params.get("cursor");
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (cursor) query.set("cursor", cursor);
  const tbody = h("tbody");
  const pager = h("div", { class: "pager" });
  const node = h("div", { class: "studies" }, h("h2", {}, "Studies"),
    h("p", { class: "hint" }, "Submit a study with POST /api/v1/studies or `normlab study run`."),
    h("table", { class: "runs" }, h("thead", {}, h("tr", {}, h("th", {}, "name"), h("th", {}, "progress"),
      h("th", {}, "members"), h("th", {}, "created"))), tbody), pager);
  async function start() {
    const page = await getJson(`studies?${query}`);
    tbody.replaceChildren(...page.items.map((s) => h("tr", { dataset: { id: s.id } },
      h("td", {}, h("a", { href: `#/studies/${s.id}` }, s.name)),
      h("td", {}, progressText(s.progress)), h("td", {}, s.n_members), h("td", {}, fmtTime(s.created_at)))));
    if (!page.items.length) tbody.replaceChildren(h("tr", {}, h("td", { colspan: 4 }, "No studies yet.")));
    fill(pager, cursor ? h("a", { href: "#/studies" }, "First page") : null,
      page.next_cursor ? h("a", { href: `#/studies?cursor=${encodeURIComponent(page.next_cursor)}`, id: "next-page" }, "Next page") : null);
  }
  return { name: "studies", node, start };
}

// One figure of a card: shown rounded, its exact value kept in data-value.
function stat(name, value, text = fmt(value)) {
  return h("dd", { dataset: { stat: name, value: JSON.stringify(value ?? null) } }, text);
}

function effectCard(c, response) {
  const d = c.divergence || {};
  return h("article", { class: "effect", dataset: { factor: c.factor, level: c.level } },
    h("h3", {}, `${c.factor}: ${c.level} vs ${c.reference}`),
    h("dl", {},
      h("dt", {}, `Δ ${response.metric} (mean)`), stat("mean_diff", c.mean_diff),
      h("dt", {}, "95% CI"), stat("mean_diff_ci", c.mean_diff_ci, ciText(c.mean_diff_ci)),
      h("dt", {}, "P(better)"), stat("p_better", c.p_better),
      h("dt", {}, "Wilcoxon p"), stat("wilcoxon_p", c.wilcoxon_p),
      h("dt", {}, "Holm p"), stat("holm_p", c.holm_p),
      h("dt", {}, "seed pairs"), stat("n_pairs", c.n_pairs),
      h("dt", {}, "diverged (level vs reference)"),
      stat("divergence", d, `${fmt(d.level_diverged)} vs ${fmt(d.reference_diverged)} (McNemar p ${fmt(d.mcnemar_p)})`)),
    h("p", { class: "verdict", dataset: { stat: "verdict" } }, c.verdict || ""),
    // The same contrast within each level of the other factors (descriptive, no test).
    (c.by_level || []).length ? h("details", {}, h("summary", {}, "within each level of the other factors"),
      h("ul", {}, ...c.by_level.map((b) => h("li", {},
        `at ${levelsText(b.at)}: Δ ${fmt(b.mean_diff)} ${ciText(b.mean_diff_ci)}, P(better) ${fmt(b.p_better)}, ${fmt(b.n_pairs)} pairs`)))) : null);
}

export async function studyView(id, params) {
  const state = { metric: params.get("metric") || "val_accuracy", log: params.get("log") === "1" };
  const abort = new AbortController();
  const head = h("div", { class: "exp-head" });
  const cards = h("div", { class: "effects" });
  const cellsTable = h("table", { class: "summary side" });
  const metricInput = h("input", { id: "curve-metric", value: state.metric });
  const logBox = h("input", { type: "checkbox", id: "log-scale", checked: state.log });
  const curveHost = h("div", { class: "charts" });
  const message = h("p", { class: "message", role: "status" });
  const node = h("div", { class: "study", dataset: { id } }, head, message,
    h("h3", {}, "Effects (seed-paired, each level against the first)"), cards,
    h("form", { class: "toolbar", id: "curve-form" }, h("label", {}, "curves of ", metricInput),
      h("button", { type: "submit" }, "Show"), h("label", {}, logBox, " log scale")),
    curveHost, h("h3", {}, "Cells"), cellsTable);
  let chart = null;
  let busy = false;
  let again = false;
  window.normlab.charts = {};

  function save() {
    const p = new URLSearchParams({ metric: state.metric });
    if (state.log) p.set("log", "1");
    setParams(p);
  }

  async function csv() {
    const response = await request(`${API}/studies/${id}/results.csv`);
    if (!response.ok) { message.textContent = `results.csv: HTTP ${response.status}`; return; }
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: `study-${id}.csv` });
    document.body.append(link); link.click(); link.remove(); URL.revokeObjectURL(url);
  }

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      do {
        again = false;
        const doc = await getJson(`studies/${id}`, { signal: abort.signal });
        window.normlab.study = doc;
        fill(head, h("h2", {}, doc.name),
          h("p", { class: "meta", id: "study-progress", dataset: { terminal: String(doc.progress.terminal) } },
            progressText(doc.progress)),
          h("p", { class: "meta" }, `response: ${doc.response.metric} (goal ${doc.response.goal || "max"}) · ${doc.n_members} members`),
          h("div", { class: "actions" }, h("button", { type: "button", id: "results-csv", onclick: csv }, "Download results.csv")));
        cards.replaceChildren(...doc.contrasts.map((c) => effectCard(c, doc.response)));
        if (!doc.contrasts.length) cards.replaceChildren(h("p", { class: "hint" }, "No contrasts yet."));
        cellsTable.replaceChildren(
          h("thead", {}, h("tr", {}, ...["levels", "finished", "diverged", "mean", "95% CI", "median", "std", "divergence rate"].map((t) => h("th", {}, t)))),
          h("tbody", {}, ...doc.cells.map((c) => h("tr", { dataset: { cell: c.index } },
            h("td", {}, levelsText(c.levels)), h("td", {}, fmt(c.n_finished)), h("td", {}, fmt(c.n_diverged)),
            h("td", {}, fmt(c.mean)), h("td", {}, ciText(c.mean_ci)), h("td", {}, fmt(c.median)), h("td", {}, fmt(c.std)),
            h("td", {}, `${fmt(c.divergence_rate)} ${ciText(c.divergence_rate_ci)}`)))));
        await curves(doc);
        node.dataset.terminal = String(doc.progress.terminal);
        return doc;
      } while (again && !abort.signal.aborted);
    } finally {
      busy = false;
    }
  }

  async function curves(doc) {
    if (!chart) {
      chart = new Chart({ id: "study-curves", title: "", log: state.log, clientZoom: true });
      curveHost.replaceChildren(chart.node);
    }
    const points = Math.min(2000, pointsFor(chart.width()));
    const answer = await getJson(`studies/${id}/curves?metric=${encodeURIComponent(state.metric)}&points=${points}`, { signal: abort.signal });
    chart.node.querySelector("h3").textContent = `${state.metric}: mean across seeds, ${answer.band}`;
    const diverged = new Map(doc.cells.map((c) => [c.index, c.n_diverged]));
    const series = answer.cells.map((c, i) => ({
      label: `${levelsText(c.levels)}${diverged.get(c.index) ? ` (${diverged.get(c.index)} diverged)` : ""}`,
      color: PALETTE[i % PALETTE.length],
      cols: { x: c.buckets.map((b) => b.step_end), mean: c.buckets.map((b) => b.mean),
        min: c.buckets.map((b) => b.ci_low), max: c.buckets.map((b) => b.ci_high), nonfinite: [] },
    }));
    chart.setData(series, []);
    window.normlab.charts["study-curves"] = { points, width: chart.width(), data: series.map((s) => s.cols), labels: series.map((s) => s.label) };
  }

  node.querySelector("#curve-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    state.metric = metricInput.value.trim() || "val_accuracy";
    save();
    try { await refresh(); } catch (error) { message.textContent = error.message; }
  });
  logBox.addEventListener("change", () => { state.log = logBox.checked; save(); if (chart) chart.setLog(state.log); });

  async function start() {
    save();
    const doc = await refresh();
    if (!doc.progress.terminal) {
      stream(`${API}/studies/${id}/stream`, null, () => { refresh().catch((error) => { message.textContent = error.message; }); }, abort.signal);
    }
  }
  return { name: "study", node, start, dispose() { abort.abort(); if (chart) chart.destroy(); } };
}
