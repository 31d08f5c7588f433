// Hash routing: the whole view state lives in the URL (#/path?query), so any view can be shared.
import { h } from "./util.js";
import { listView } from "./list.js";
import { submitView } from "./submit.js";
import { experimentView } from "./experiment.js";
import { compareView } from "./compare.js";
import { studyListView, studyView } from "./study.js";

const app = document.getElementById("app");
let current = null; // { dispose } of the view on screen

export function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?");
  return { path, params: new URLSearchParams(query) };
}

// Replace the query part of the current view's URL (no new history entry, no re-render).
export function setParams(params) {
  const { path } = parseHash();
  const query = params.toString().replace(/%2C/gi, ","); // readable lists of ids and names
  history.replaceState(null, "", `#${path}${query ? `?${query}` : ""}`);
}

const routes = [
  [/^\/$/, (m, p) => listView(p)],
  [/^\/new$/, (m, p) => submitView(p)],
  [/^\/e\/([0-9a-f-]{36})$/, (m, p) => experimentView(m[1], p)],
  [/^\/compare$/, (m, p) => compareView(p)],
  [/^\/studies$/, (m, p) => studyListView(p)],
  [/^\/studies\/([0-9a-f-]{36})$/, (m, p) => studyView(m[1], p)],
];

async function render() {
  app.dataset.ready = "false";
  if (current && current.dispose) current.dispose();
  current = null;
  const { path, params } = parseHash();
  app.replaceChildren();
  app.dataset.view = "loading";
  for (const [pattern, make] of routes) {
    const match = path.match(pattern);
    if (!match) continue;
    try {
      current = await make(match, params);
      app.replaceChildren(current.node);
      app.dataset.view = current.name;
      // Started once on screen: charts size themselves to the width they are given.
      if (current.start) await current.start();
      app.dataset.ready = "true";
    } catch (error) {
      app.replaceChildren(h("p", { class: "error", role: "alert" }, String(error.message || error)));
      app.dataset.view = "error";
    }
    return;
  }
  app.replaceChildren(h("p", { class: "error" }, `No page at ${path}`));
  app.dataset.view = "error";
}

window.normlab = { charts: {}, events: 0 };
window.addEventListener("hashchange", render);
render();
