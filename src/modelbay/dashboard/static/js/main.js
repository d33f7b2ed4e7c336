// The dashboard: the models, their versions and states, live charts, a playground, admin actions.
// Everything comes from the server's own APIs (see modelbay/dashboard/__init__.py), polled every
// REFRESH_MS; nothing is fetched from anywhere else.

import * as admin from "./admin.js";
import { apiKey, call, failure, seg, setApiKey } from "./api.js";
import { History, ModelCharts } from "./charts.js";
import { fill, h } from "./dom.js";
import { renderPlayground } from "./playground.js";

const REFRESH_MS = 2000;
const KINDS = { image: "image classification", tensor: "tensors", custom: "predict.py" };
const $ = (id) => document.getElementById(id);
const history = new History();
const state = {
  summary: null,
  index: null, // the repository index, when this page may read it
  indexError: null,
  traffic: null, // the selected model's traffic (GET .../traffic)
  metadata: new Map(), // "model\0version" -> OIP model metadata
  selected: null,
  refusedKey: null, // a key the repository API refused (not admin, or not valid): not asked again
  tab: "overview",
  charts: null,
  shown: { overview: "", playground: "", traffic: "" }, // what each pane was last drawn from
};

const keysOn = () => state.summary && state.summary.repository_api === "admin key";
const canManage = () => {
  const api = state.summary && state.summary.repository_api;
  return api === "open" || (api === "admin key" && Boolean(apiKey()) && apiKey() !== state.refusedKey);
};
const canInfer = () => Boolean(state.summary) && (!keysOn() || Boolean(apiKey()));
const changesRefused = () => {
  const s = state.summary;
  if (s.changes_refused) return s.changes_refused;
  return s.model_control === "none" ? "the server's model control mode is none" : null;
};

/** Every model the page knows: served ones (summary) and, with the index, those loading, failed or on disk. */
function models() {
  const byName = new Map();
  for (const model of state.summary ? state.summary.models : []) byName.set(model.name, { name: model.name, served: model, rows: [] });
  for (const row of state.index || []) {
    if (!byName.has(row.name)) byName.set(row.name, { name: row.name, served: null, rows: [] });
    byName.get(row.name).rows.push(row);
  }
  return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
}

/** The version rows of `model`: the index's when read, else the served versions. */
function versionRows(model) {
  if (state.index) return model.rows;
  return (model.served ? model.served.versions : []).map((v) => ({ name: model.name, version: v.version, state: v.ready ? "READY" : "UNAVAILABLE", reason: "" }));
}

function selectedModel() {
  return models().find((model) => model.name === state.selected) || null;
}

// ---- refresh loop

let timer = null;
let running = false;
let again = false;

async function refresh() {
  if (running) {
    again = true;
    return;
  }
  running = true;
  clearTimeout(timer);
  try {
    await refreshOnce();
  } finally {
    running = false;
    timer = setTimeout(refresh, REFRESH_MS);
    if (again) {
      again = false;
      refresh();
    }
  }
}

async function refreshOnce() {
  const reply = await call("GET", "/dashboard/api/summary");
  if (!reply.ok) {
    notice(`the server's summary: ${failure(reply)}`, "error");
    return;
  }
  state.summary = reply.data;
  history.add(reply.data);
  state.index = null;
  state.indexError = null;
  if (canManage()) {
    const index = await call("POST", "/v2/repository/index", { json: {} });
    if (index.ok) state.index = index.data;
    else if (keysOn() && [401, 403].includes(index.status)) {
      state.refusedKey = apiKey();
      notice(failure(index), "error");
    } else state.indexError = failure(index);
  }
  const all = models();
  if (!all.some((model) => model.name === state.selected)) {
    const first = all.find((model) => model.served) || all[0];
    state.selected = first ? first.name : null;
  }
  const model = selectedModel();
  state.traffic = null;
  if (model && model.served && canManage()) {
    const traffic = await admin.readTraffic(model.name);
    if (traffic.ok) state.traffic = traffic.data;
  }
  if (model && model.served && canInfer()) await fetchMetadata(model);
  render();
}

async function fetchMetadata(model) {
  for (const version of model.served.versions) {
    const key = `${model.name}\u0000${version.version}`;
    if (state.metadata.has(key) || !version.ready) continue;
    const reply = await call("GET", `/v2/models/${seg(model.name)}/versions/${seg(version.version)}`);
    if (reply.ok) state.metadata.set(key, reply.data);
  }
}

// ---- drawing

function render() {
  const summary = state.summary;
  $("server-version").textContent = `${summary.server.version}`;
  renderAccess();
  renderList();
  const model = selectedModel();
  $("model").hidden = !model;
  $("empty").hidden = Boolean(model);
  if (!model) return;
  renderOverview(model);
  renderPlaygroundPane(model);
  renderCharts(model);
}

function renderAccess() {
  const api = state.summary.repository_api;
  let text;
  if (api === "admin key") {
    text = apiKey()
      ? "This server checks API keys; the key typed here is sent with every call (kept in this tab only)."
      : "This server checks API keys: type one (an admin key for the actions) to see states, try models and manage them.";
  } else if (api === "open") {
    text = "No API keys on this server: inference and the model repository API answer this page (a loopback client).";
  } else {
    text = "No API keys on this server: the model repository API (states, actions, logs) answers loopback clients only.";
  }
  $("access").textContent = text;
  $("key-form").hidden = api !== "admin key";
  $("load-form").hidden = !canManage() || Boolean(changesRefused());
}

function stateChips(model) {
  return versionRows(model).map((row) => h("span", { class: `state ${row.state}`, title: row.reason || row.state, text: `v${row.version} ${row.state}` }));
}

function renderList() {
  const list = $("models");
  const items = models().map((model) =>
    h("li", {},
      h("button", {
        type: "button",
        class: model.name === state.selected ? "model-link selected" : "model-link",
        "data-model": model.name,
        onclick: () => select(model.name),
      }, h("span", { class: "model-name", text: model.name }), h("span", { class: "chips" }, stateChips(model)))));
  fill(list, items.length ? items : h("li", { class: "muted", text: "no model" }));
}

function select(name) {
  state.selected = name;
  state.traffic = null; // the previous model's
  state.shown = { overview: "", playground: "", traffic: "" };
  fill($("load-log"));
  render(); // at once from what the page knows; the refresh adds the traffic and metadata
  refresh();
}

function spec(tensors) {
  if (!tensors) return "";
  return tensors.map((t) => `${t.name} ${t.datatype} [${t.shape.join(", ")}]`).join("; ");
}

function renderOverview(model) {
  const served = model.served;
  const rows = versionRows(model);
  const metadata = (version) => state.metadata.get(`${model.name}\u0000${version}`);
  const drawn = JSON.stringify([rows, served, state.traffic && state.traffic.serving, canManage(), [...state.metadata.keys()], state.indexError]);
  if (drawn === state.shown.overview) return;
  state.shown.overview = drawn;
  const defaultVersion = served ? served.default_version : null;
  const split = state.traffic && state.traffic.serving ? state.traffic.serving.split : null;
  const manage = canManage() && !changesRefused();
  const versions = new Map((served ? served.versions : []).map((v) => [v.version, v]));
  const table = h("table", { id: "versions" },
    h("tr", {}, ["version", "state", "inputs", "outputs", "batching", "traffic", ""].map((name) => h("th", { text: name }))),
    rows.map((row) => {
      const live = versions.get(row.version);
      const meta = metadata(row.version);
      const share = split ? (split[row.version] !== undefined ? `${Number(split[row.version]).toFixed(1)}%` : "0%") : row.version === defaultVersion ? "100% (default)" : "";
      const batching = live ? `max_batch_size ${live.max_batch_size}, max_queue_delay_ms ${live.max_queue_delay_ms}` : "";
      return h("tr", { "data-version": row.version },
        h("td", {}, row.version, row.version === defaultVersion ? h("span", { class: "default", title: "answers calls that name no version", text: " default" }) : null),
        h("td", {}, h("span", { class: `state ${row.state}`, text: row.state }), row.reason ? h("div", { class: row.state === "FAILED" ? "reason error" : "reason muted", text: row.reason }) : null),
        h("td", { class: "spec", text: meta ? spec(meta.inputs) : "" }),
        h("td", { class: "spec", text: meta ? spec(meta.outputs) : "" }),
        h("td", { class: "spec", text: batching }),
        h("td", { text: share }),
        h("td", { class: "actions" },
          canManage() ? h("button", { type: "button", class: "log", "data-version": row.version, text: "Load log", onclick: () => admin.showLog($("load-log"), model.name, row.version) }) : null,
          manage && live && live.ready && row.version !== defaultVersion
            ? h("button", { type: "button", class: "set-default", "data-version": row.version, text: "Make default", onclick: () => act(`version ${row.version} of ${model.name} is now the default`, admin.setDefault(model.name, row.version)) })
            : null));
    }));
  const kind = served && served.versions.length ? KINDS[served.versions[0].kind] : "not served";
  const facts = served ? `default version ${defaultVersion} · ${kind}` : "not serving";
  let note = null;
  if (!canManage()) note = keysOn() ? "Type an admin key above for every version's state, the actions and the load logs." : "The model repository API answers loopback clients only: states of versions not serving, actions and logs are hidden.";
  else if (state.indexError) note = `repository index: ${state.indexError}`;
  else if (changesRefused()) note = `Changes refused: ${changesRefused()}.`;
  const actions = manage
    ? h("div", { class: "row", id: "model-actions" },
        h("button", { type: "button", class: "primary", id: "model-load", text: served ? "Reload" : "Load", onclick: () => act(`${model.name} loaded`, admin.loadModel(model.name), `loading ${model.name}`) }),
        served ? admin.confirmButton("Unload", "Really unload?", () => act(`${model.name} unloaded`, admin.unloadModel(model.name), `unloading ${model.name}`), { id: "model-unload" }) : null,
        served ? h("button", { type: "button", text: "Default: highest", onclick: () => act(`${model.name}: the highest version is the default`, admin.setDefault(model.name, null)) }) : null)
    : null;
  fill($("overview"),
    h("div", { class: "model-head" }, h("h2", { text: model.name }), h("p", { class: "muted", text: facts })),
    note ? h("p", { class: "note", text: note }) : null,
    table,
    actions);
  renderTrafficEditor(model, manage);
}

function renderTrafficEditor(model, manage) {
  const container = $("traffic");
  const ready = model.served ? model.served.versions.filter((v) => v.ready).map((v) => v.version) : [];
  const drawn = JSON.stringify([model.name, state.traffic, ready, manage]);
  const typing = document.activeElement && document.activeElement.tagName === "INPUT" && container.contains(document.activeElement);
  if (drawn === state.shown.traffic || typing) return;
  state.shown.traffic = drawn;
  if (!manage || !state.traffic || !ready.length) {
    fill(container);
    return;
  }
  admin.renderTraffic(container, model.name, state.traffic, ready, (reply) => done("traffic split saved", reply));
}

function renderPlaygroundPane(model) {
  const served = model.served;
  const drawn = JSON.stringify([model.name, served && served.versions.map((v) => [v.version, v.kind, v.ready]), served && served.default_version, canInfer(), apiKey() !== ""]);
  if (drawn === state.shown.playground) return;
  state.shown.playground = drawn;
  const container = $("playground");
  if (!served) {
    fill(container, h("p", { class: "muted", text: "This model is not serving: load it first." }));
    return;
  }
  if (!canInfer()) {
    fill(container, h("p", { class: "note", text: "This server checks API keys: type one above to try the model." }));
    return;
  }
  renderPlayground(container, {
    model: model.name,
    versions: served.versions,
    defaultVersion: served.default_version,
    keys: keysOn(),
    metadata: async (version) => {
      const key = `${model.name}\u0000${version}`;
      if (!state.metadata.has(key)) await fetchMetadata(model);
      return state.metadata.get(key) || null;
    },
    onAnswer: () => setTimeout(refresh, 300),
  });
}

function renderCharts(model) {
  if (state.tab !== "metrics") return;
  if (!state.charts || state.charts.model !== model.name) {
    if (state.charts) state.charts.destroy();
    state.charts = new ModelCharts($("charts"), model.name, history);
  } else {
    state.charts.update();
  }
}

// ---- actions

function notice(text, kind = "ok") {
  const element = $("notice");
  element.textContent = text;
  element.className = kind;
}

function done(what, reply) {
  notice(reply.ok ? what : failure(reply), reply.ok ? "ok" : "error");
  state.metadata.clear();
  state.shown = { overview: "", playground: "", traffic: "" };
  refresh();
}

async function act(what, pending, busy) {
  if (busy) notice(`${busy}...`, "busy");
  refresh(); // the loop shows LOADING while a load runs
  done(what, await pending);
}

function showTab(tab) {
  state.tab = tab;
  for (const name of ["overview", "metrics", "playground"]) {
    $(`tab-${name}`).classList.toggle("selected", name === tab);
    $(`pane-${name}`).hidden = name !== tab;
  }
  if (tab !== "metrics" && state.charts) {
    state.charts.destroy();
    state.charts = null;
  }
  const model = selectedModel();
  if (model && state.summary) renderCharts(model);
}

function start() {
  for (const name of ["overview", "metrics", "playground"]) $(`tab-${name}`).addEventListener("click", () => showTab(name));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey($("api-key").value.trim());
    $("api-key").value = "";
    $("key-state").textContent = apiKey() ? "key set" : "";
    state.metadata.clear();
    state.shown = { overview: "", playground: "", traffic: "" };
    refresh();
  });
  $("forget-key").addEventListener("click", () => {
    setApiKey("");
    $("key-state").textContent = "";
    state.shown = { overview: "", playground: "", traffic: "" };
    refresh();
  });
  $("key-state").textContent = apiKey() ? "key set" : "";
  $("load-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("load-name").value.trim();
    if (!name) return;
    state.selected = name;
    act(`${name} loaded`, admin.loadModel(name), `loading ${name}`);
  });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => state.charts && state.charts.resize(), 150);
  });
  showTab("overview");
  refresh();
}

start();
