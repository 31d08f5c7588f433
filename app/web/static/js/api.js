// Every request goes through here: the API key (when the server has keys) is asked once, kept in
// sessionStorage for this tab, sent as a Bearer header; a 401 asks again. Never in a URL or
// localStorage.

const KEY = "normlab.apiKey";
export const API = "/api/v1";
let pendingKey = null;

function askKey(reason) {
  if (pendingKey) return pendingKey;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = reason;
  input.value = "";
  pendingKey = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const key = input.value.trim();
      if (key) sessionStorage.setItem(KEY, key);
      pendingKey = null;
      resolve();
    }, { once: true });
  });
  dialog.showModal();
  input.focus();
  return pendingKey;
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

// fetch() with the key; a 401 asks for a key and retries.
export async function request(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = sessionStorage.getItem(KEY);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    let detail = "This server needs an API key.";
    try { detail = (await response.json()).detail || detail; } catch { /* not JSON */ }
    await askKey(key ? `The key was refused: ${detail}` : "This server needs an API key.");
  }
}

export async function getJson(path, options = {}) {
  const response = await request(path.startsWith("/") ? path : `${API}/${path}`, options);
  let body = null;
  try { body = await response.json(); } catch { /* empty */ }
  if (!response.ok) throw new ApiError(response.status, body ? body.detail : response.statusText);
  return body;
}

export function postJson(path, body) {
  return getJson(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

// Server-Sent Events over fetch(): EventSource cannot send the Authorization header. Reconnects
// with Last-Event-ID after a dropped connection until `end` arrives or `signal` aborts.
export async function stream(path, lastEventId, onEvent, signal) {
  let last = lastEventId;
  let retry = 2000;
  while (!signal.aborted) {
    let ended = false;
    try {
      const headers = { Accept: "text/event-stream" };
      if (last !== null && last !== undefined) headers["Last-Event-ID"] = String(last);
      const response = await request(path, { headers, signal });
      if (!response.ok) throw new ApiError(response.status, response.statusText);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = { event: "message", data: [], id: null };
          for (const line of block.split("\n")) {
            if (!line || line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "data") event.data.push(text);
            else if (field === "event") event.event = text;
            else if (field === "id") event.id = text;
            else if (field === "retry" && /^\d+$/.test(text)) retry = Number(text);
          }
          if (event.id !== null) last = event.id;
          if (!event.data.length) continue;
          onEvent(event.event, event.data.join("\n"));
          if (event.event === "end") ended = true;
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status === 404) return;
    }
    if (ended || signal.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, retry));
  }
}
