// The admin actions (the model repository API: an admin key, or a loopback client on a server
// without keys): load, unload, the default version, the traffic split, each version's load log.

import { call, failure, seg } from "./api.js";
import { fill, h } from "./dom.js";

const repo = (model) => `/v2/repository/models/${seg(model)}`;

/** Load (or reload) `model`; resolves to the reply once the server answers (after the load). */
export function loadModel(model) {
  return call("POST", `${repo(model)}/load`, { json: {} });
}

export function unloadModel(model) {
  return call("POST", `${repo(model)}/unload`, { json: {} });
}

/** Pin `version` as the one answering unversioned calls; null: the highest again. */
export function setDefault(model, version) {
  return call("POST", `${repo(model)}/default`, { json: { version } });
}

export function readTraffic(model) {
  return call("GET", `${repo(model)}/traffic`);
}

export function readLog(model, version) {
  return call("GET", `${repo(model)}/versions/${seg(version)}/log`);
}

/** A button that asks once more before `action` runs ("Unload" -> "Really unload?"). */
export function confirmButton(label, question, action, props = {}) {
  const button = h("button", { type: "button", ...props, text: label });
  let armed = false;
  button.addEventListener("click", () => {
    if (!armed) {
      armed = true;
      button.textContent = question;
      button.classList.add("danger");
      setTimeout(() => {
        armed = false;
        button.textContent = label;
        button.classList.remove("danger");
      }, 4000);
      return;
    }
    armed = false;
    button.textContent = label;
    button.classList.remove("danger");
    action();
  });
  return button;
}

/** The traffic split editor of `model` in `container`: a weight per READY version, saved as the
 *  policy's split (sticky and shadow kept); `done(reply)` after each change. */
export function renderTraffic(container, model, traffic, readyVersions, done) {
  const policy = (traffic && traffic.traffic) || {};
  const split = policy.split || {};
  const inputs = readyVersions.map((version) =>
    h("input", { type: "number", min: 0, step: "any", class: "weight", "data-version": version, "aria-label": `weight of version ${version}`, value: split[version] ?? "" }));
  const save = h("button", { type: "button", id: "split-save", text: "Save split" });
  save.addEventListener("click", async () => {
    const weights = {};
    for (const input of inputs) if (input.value !== "") weights[input.dataset.version] = Number(input.value);
    done(await call("POST", `${repo(model)}/traffic`, { json: { ...policy, split: weights } }));
  });
  const clear = h("button", { type: "button", text: "Clear split" });
  clear.addEventListener("click", async () => {
    // Stickiness applies to a split: it goes with it; a shadow stays.
    done(await call("POST", `${repo(model)}/traffic`, { json: policy.shadow ? { shadow: policy.shadow } : null }));
  });
  const serving = traffic && traffic.serving && traffic.serving.split;
  const now = serving
    ? Object.entries(serving).map(([v, pct]) => `version ${v}: ${Number(pct).toFixed(1)}%`).join(", ")
    : "no split: the default version answers every call that names none";
  fill(container,
    h("h3", { text: "Traffic split" }),
    h("p", { class: "muted", id: "split-now", text: `Now: ${now}${policy.shadow ? `; shadow to version ${policy.shadow.version}` : ""}` }),
    h("div", { class: "row" }, readyVersions.map((v, i) => h("label", { class: "weight-label" }, `version ${v} `, inputs[i])), save, clear));
}

/** Show version `version`'s load log in `container`. */
export async function showLog(container, model, version) {
  fill(container, h("p", { class: "muted", text: `reading the load log of version ${version}...` }));
  const reply = await readLog(model, version);
  if (!reply.ok) {
    fill(container, h("p", { class: "error", text: failure(reply) }));
    return;
  }
  const { state, reason, lines } = reply.data;
  const text = lines.length
    ? lines.join("\n")
    : "No lines kept for this version's last load: see the server's log.";
  fill(container,
    h("h3", {}, `Load log: ${model} version ${version} `, h("span", { class: `state ${state}`, text: state })),
    reason ? h("p", { class: state === "FAILED" ? "error" : "muted", text: reason }) : null,
    h("pre", { class: "log", id: "load-log-lines", text }));
}
