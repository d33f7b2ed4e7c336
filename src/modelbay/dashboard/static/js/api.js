// The server's APIs as the page calls them: same origin, the API key (if typed) as a bearer token.

const KEY = "modelbay.apiKey";

/** The API key typed into the page: kept in this tab's sessionStorage only, never in a cookie. */
export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** Percent-encode one path segment (a model name, a version). */
export const seg = encodeURIComponent;

/**
 * Call `method path`. `json`: a value sent as JSON; `body` + `contentType`: raw bytes (a File).
 * Resolves (never rejects) to {ok, status, data (parsed JSON, or the text), ms (round trip in
 * milliseconds, body read), version (x-model-version), requestId (x-request-id)}; status 0 when
 * the server could not be reached.
 */
export async function call(method, path, { json, body, contentType } = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let payload = body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  } else if (contentType) {
    headers["Content-Type"] = contentType;
  }
  const started = performance.now();
  try {
    const response = await fetch(path, { method, headers, body: payload, cache: "no-store" });
    const text = await response.text();
    const ms = performance.now() - started;
    let data = text;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      // not JSON: keep the text
    }
    return {
      ok: response.ok,
      status: response.status,
      data,
      ms,
      version: response.headers.get("x-model-version"),
      requestId: response.headers.get("x-request-id"),
    };
  } catch (error) {
    return { ok: false, status: 0, data: { error: `no answer from the server (${error.message})` }, ms: 0 };
  }
}

/** The message of a failed reply: the server's {"error"} or its status. */
export function failure(reply) {
  if (reply.data && typeof reply.data === "object" && reply.data.error) return reply.data.error;
  return reply.status ? `HTTP ${reply.status}` : "no answer from the server";
}
