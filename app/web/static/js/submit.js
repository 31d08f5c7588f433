// The submit form: a preset picker, one input per config field prefilled with the defaults (or
// the preset's values), and the server's 422 field errors shown next to the field they name.
import { ApiError, getJson, postJson } from "./api.js";
import { h } from "./util.js";

function resolver(openapi) {
  const components = openapi.components.schemas;
  const resolve = (s) => {
    if (!s) return s;
    if (s.$ref) return resolve(components[s.$ref.split("/").pop()]);
    if (s.allOf && s.allOf.length === 1) return resolve(s.allOf[0]);
    return s;
  };
  // The allowed values of the field at `path` (a list of keys), if it is an enumeration.
  return (path) => {
    let s = resolve(components.ExperimentConfig);
    for (const key of path) s = resolve(s && s.properties ? s.properties[key] : null);
    if (!s) return null;
    if (s.enum) return s.enum;
    const option = (s.anyOf || []).find((o) => o.enum);
    return option ? option.enum : null;
  };
}

export async function submitView(params) {
  const [presets, defaults, openapi] = await Promise.all([
    getJson("presets"), getJson("config/defaults"), getJson("/openapi.json")]);
  const enumAt = resolver(openapi);
  const fields = new Map(); // dotted path → { input, kind, error }
  const general = h("div", { class: "error", role: "alert", id: "form-error" });
  const presetSelect = h("select", { id: "preset", name: "preset" },
    h("option", { value: "" }, "(no preset: defaults)"),
    ...presets.map((p) => h("option", { value: p.name, selected: p.name === params.get("preset") }, `${p.name} — ${p.description}`)));
  const tags = h("input", { id: "f-tags", name: "tags", placeholder: "comma-separated, e.g. bn,demo" });
  const tagsError = h("span", { class: "field-error", dataset: { field: "tags" } });
  fields.set("tags", { input: tags, kind: "tags", error: tagsError });
  const body = h("div", { class: "config-fields" });
  const form = h("form", { id: "submit-form", novalidate: true },
    h("label", { class: "field" }, h("span", {}, "preset"), presetSelect),
    h("label", { class: "field" }, h("span", {}, "tags"), tags, tagsError),
    body, general,
    h("button", { type: "submit", id: "submit" }, "Submit experiment"));

  function leaf(path, value) {
    const key = path.join(".");
    const options = enumAt(path);
    let input, kind;
    if (typeof value === "boolean") {
      kind = "bool"; input = h("input", { type: "checkbox", checked: value });
    } else if (options) {
      kind = "enum"; input = h("select", {}, ...options.map((o) => h("option", { value: o, selected: o === value }, o)));
    } else if (typeof value === "number") {
      kind = "number"; input = h("input", { type: "text", inputmode: "decimal", value: String(value) });
    } else if (Array.isArray(value)) {
      kind = "list"; input = h("input", { type: "text", value: value.join(", ") });
    } else if (value === null) {
      kind = "json"; input = h("input", { type: "text", value: "", placeholder: "none" });
    } else {
      kind = "text"; input = h("input", { type: "text", value: String(value) });
    }
    input.id = `f-${key}`;
    input.name = key;
    const error = h("span", { class: "field-error", dataset: { field: key } });
    fields.set(key, { input, kind, error });
    return h("label", { class: "field" }, h("span", {}, path[path.length - 1]), input, error);
  }

  function section(path, obj) {
    return Object.entries(obj).map(([key, value]) => (value && typeof value === "object" && !Array.isArray(value)
      ? h("fieldset", {}, h("legend", {}, [...path, key].join(".")), ...section([...path, key], value))
      : leaf([...path, key], value)));
  }

  function fill() {
    const preset = presets.find((p) => p.name === presetSelect.value);
    for (const [key, f] of fields) if (key !== "tags") fields.delete(key);
    body.replaceChildren(...section([], preset ? preset.config : defaults));
  }

  function parse(f) {
    const raw = f.input.value.trim();
    switch (f.kind) {
      case "bool": return f.input.checked;
      case "enum": case "text": return f.input.value;
      case "number": return raw === "" ? null : (Number.isNaN(Number(raw)) ? raw : Number(raw));
      case "list": return raw === "" ? [] : raw.split(",").map((x) => (Number.isNaN(Number(x.trim())) ? x.trim() : Number(x.trim())));
      case "tags": return raw === "" ? [] : raw.split(",").map((x) => x.trim()).filter(Boolean);
      default: if (raw === "") return null; try { return JSON.parse(raw); } catch { return raw; }
    }
  }

  function collect() {
    const out = {};
    for (const [key, f] of fields) {
      const path = key.split(".");
      let at = out;
      for (const part of path.slice(0, -1)) at = at[part] = at[part] || {};
      at[path[path.length - 1]] = parse(f);
    }
    if (presetSelect.value) out.preset = presetSelect.value;
    return out;
  }

  function clearErrors() {
    general.textContent = "";
    for (const f of fields.values()) { f.error.textContent = ""; f.input.removeAttribute("aria-invalid"); }
  }

  // A 422's `loc` (["body", "model", "hidden_layers", 0]) → the nearest field that exists.
  function showErrors(detail) {
    const unplaced = [];
    for (const d of detail) {
      const loc = (d.loc || []).filter((p, i) => !(i === 0 && p === "body"));
      let placed = false;
      for (let n = loc.length; n > 0 && !placed; n -= 1) {
        const f = fields.get(loc.slice(0, n).join("."));
        if (!f) continue;
        f.error.textContent = [f.error.textContent, d.msg].filter(Boolean).join("; ");
        f.input.setAttribute("aria-invalid", "true");
        placed = true;
      }
      if (!placed) unplaced.push(`${loc.join(".") || "body"}: ${d.msg}`);
    }
    general.textContent = unplaced.join("\n");
    const first = form.querySelector("[aria-invalid]");
    if (first) first.focus();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    try {
      const created = await postJson("experiments", collect());
      location.hash = `#/e/${created.id}`;
    } catch (error) {
      if (error instanceof ApiError && error.status === 422 && Array.isArray(error.detail)) showErrors(error.detail);
      else general.textContent = error.message;
      form.dataset.errors = String(form.querySelectorAll("[aria-invalid]").length);
    }
  });
  presetSelect.addEventListener("change", () => { clearErrors(); fill(); });
  fill();
  return { name: "submit", node: h("div", { class: "submit" }, h("h2", {}, "New experiment"), form) };
}
