// The experiments list: filters, keyset paging, live status, selection for a comparison.
import { getJson } from "./api.js";
import { h, fill, fmt, fmtTime, statusBadge, TERMINAL } from "./util.js";

const STATUSES = ["", "queued", "running", "cancelling", "succeeded", "diverged", "failed", "cancelled"];
const PAGE = 25;
const REFRESH_MS = 2000;

function keyFigures(s) {
  if (!s) return "—";
  if (s.diverged_at_step !== null && s.diverged_at_step !== undefined) return `diverged at step ${s.diverged_at_step}`;
  return `test acc ${fmt(s.final_test_accuracy)} · loss ${fmt(s.final_loss)} · ${s.steps} steps · ${fmt(s.duration_s)} s`;
}

export async function listView(params) {
  const filters = { status: params.get("status") || "", tag: params.get("tag") || "", name: params.get("name") || "" };
  const cursor = params.get("cursor");
  const selected = new Set();
  let timer = null;
  let disposed = false;

  const limit = Math.min(200, Math.max(1, Number(params.get("limit")) || PAGE));
  const query = new URLSearchParams({ limit: String(limit) });
  for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
  if (cursor) query.set("cursor", cursor);

  const status = h("select", { name: "status", id: "filter-status" },
    ...STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s || "any status")));
  const tag = h("input", { name: "tag", id: "filter-tag", placeholder: "tag", value: filters.tag });
  const name = h("input", { name: "name", id: "filter-name", placeholder: "name", value: filters.name });
  const form = h("form", { class: "filters", id: "filters" }, status, tag, name,
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const p = new URLSearchParams();
    if (status.value) p.set("status", status.value);
    if (tag.value.trim()) p.set("tag", tag.value.trim());
    if (name.value.trim()) p.set("name", name.value.trim());
    if (limit !== PAGE) p.set("limit", String(limit));
    location.hash = `#/?${p}`;
  });

  const compare = h("button", { type: "button", id: "compare-selected", disabled: true,
    onclick: () => { location.hash = `#/compare?ids=${[...selected].join(",")}`; } }, "Compare selected");
  const tbody = h("tbody");
  const pager = h("div", { class: "pager" });
  const message = h("p", { class: "message", role: "status" });
  const node = h("div", { class: "list" },
    h("div", { class: "toolbar" }, h("h2", {}, "Experiments"), h("a", { class: "button", href: "#/new" }, "New experiment"), compare),
    form, message,
    h("table", { class: "runs" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "status"), h("th", {}, "name"),
        h("th", {}, "tags"), h("th", {}, "created"), h("th", {}, "result"))),
      tbody),
    pager);

  function renderRows(page) {
    tbody.replaceChildren(...page.items.map((e) => h("tr", { dataset: { id: e.id } },
      h("td", {}, h("input", { type: "checkbox", checked: selected.has(e.id), "aria-label": `select ${e.name}`,
        onchange: (event) => {
          if (event.target.checked && selected.size < 20) selected.add(e.id);
          else { selected.delete(e.id); event.target.checked = false; }
          compare.disabled = selected.size < 1;
          compare.textContent = `Compare selected (${selected.size})`;
        } })),
      h("td", { class: "status-cell" }, statusBadge(e.status)),
      h("td", {}, h("a", { href: `#/e/${e.id}` }, e.name)),
      h("td", {}, e.tags.map((t) => h("a", { class: "tag", href: `#/?tag=${encodeURIComponent(t)}` }, t))),
      h("td", {}, fmtTime(e.created_at)),
      h("td", { class: "figures" }, keyFigures(e.summary)))));
    if (!page.items.length) tbody.replaceChildren(h("tr", {}, h("td", { colspan: 6 }, "No experiments match.")));
    const base = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) base.set(k, v);
    if (limit !== PAGE) base.set("limit", String(limit));
    const next = new URLSearchParams(base);
    if (page.next_cursor) next.set("cursor", page.next_cursor);
    fill(pager, 
      cursor ? h("a", { href: `#/?${base}` }, "First page") : null,
      page.next_cursor ? h("a", { href: `#/?${next}`, id: "next-page" }, "Next page") : null);
  }

  async function refresh() {
    try {
      const page = await getJson(`experiments?${query}`);
      if (disposed) return;
      renderRows(page);
      message.textContent = "";
      // Live status: keep polling while anything on this page can still change.
      if (page.items.some((e) => !TERMINAL.has(e.status))) timer = setTimeout(refresh, REFRESH_MS);
    } catch (error) {
      message.textContent = error.detail && Array.isArray(error.detail)
        ? error.detail.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}`).join("; ") : error.message;
    }
  }

  return { name: "list", node, start: refresh, dispose() { disposed = true; clearTimeout(timer); } };
}
