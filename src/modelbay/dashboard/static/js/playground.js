// A playground per model: an image on an image classifier (its top-k), JSON tensors (or text, for
// BYTES inputs) on a tensor model, JSON on a predict.py model; the answer, its latency, and the
// same call as curl and as Python to copy.

import { call, failure, seg } from "./api.js";
import { codeBlock, fill, h } from "./dom.js";
import { imageSnippets, jsonSnippets } from "./snippets.js";

const SHOWN_VALUES = 64; // values of an output tensor shown before "... N more"

/** A random example of `tensor`'s shape and datatype ({name, datatype, shape}; -1 dims become 1,
 *  or `rows` for the first). Returns the OIP request tensor {name, shape, datatype, data}. */
export function exampleTensor(tensor, rows = 1) {
  const shape = tensor.shape.map((size, axis) => (size >= 0 ? size : axis === 0 ? rows : 1));
  const count = shape.reduce((a, b) => a * b, 1);
  const datatype = tensor.datatype;
  const value = () => {
    if (datatype === "BOOL") return Math.random() < 0.5;
    if (datatype === "BYTES") return "hello";
    if (datatype.startsWith("FP")) return Math.round(Math.random() * 1000) / 1000;
    return Math.floor(Math.random() * 10);
  };
  return { name: tensor.name, shape, datatype, data: Array.from({ length: count }, value) };
}

/** The OIP infer request of a random example for model metadata `metadata`. */
export function exampleRequest(metadata) {
  return { inputs: metadata.inputs.map((tensor) => exampleTensor(tensor)) };
}

function textRequest(metadata, lines) {
  const [input] = metadata.inputs;
  const shape = input.shape.map((size, axis) => (axis === 0 ? lines.length : size >= 0 ? size : 1));
  return { inputs: [{ name: input.name, shape, datatype: "BYTES", data: lines }] };
}

function shortTensor(tensor) {
  const data = tensor.data || [];
  const shown = data.slice(0, SHOWN_VALUES);
  const more = data.length > shown.length ? [`... ${data.length - shown.length} more`] : [];
  return { ...tensor, data: [...shown, ...more] };
}

/** The playground of one model in `container`. ctx: {model, versions: [summary version], defaultVersion,
 *  metadata(version) -> Promise<metadata | null>, keys (the server checks API keys), onAnswer()}. */
export function renderPlayground(container, ctx) {
  const served = ctx.versions.filter((v) => v.ready);
  if (!served.length) {
    fill(container, h("p", { class: "muted", text: "No version of this model is serving: load it first." }));
    return;
  }
  const picker = h("select", { id: "playground-version", "aria-label": "version" },
    h("option", { value: "", text: `default (version ${ctx.defaultVersion})` }),
    served.map((v) => h("option", { value: v.version, text: `version ${v.version}` })));
  const pane = h("div", { class: "playground-pane" });
  const answer = h("div", { class: "answer", id: "playground-answer" });
  const show = async () => {
    const version = picker.value || null;
    const entry = served.find((v) => v.version === (version || ctx.defaultVersion)) || served[0];
    const metadata = await ctx.metadata(entry.version);
    fill(answer);
    const args = { ...ctx, version, metadata, answer };
    if (entry.kind === "image") imagePane(pane, args);
    else if (metadata && metadata.inputs.some((t) => t.datatype === "BYTES")) textPane(pane, args);
    else if (entry.kind === "tensor" && metadata) tensorPane(pane, args, true);
    else tensorPane(pane, args, false);
  };
  picker.addEventListener("change", show);
  fill(container, h("div", { class: "row" }, h("label", {}, "Version ", picker)), pane, answer);
  show();
}

function imagePane(pane, ctx) {
  const input = h("input", { type: "file", accept: "image/*", id: "playground-file" });
  const preview = h("img", { class: "preview", alt: "", hidden: true });
  const zone = h("div", { class: "drop", id: "playground-drop", tabindex: 0 },
    h("p", {}, "Drop an image here, or ", h("label", { class: "link" }, "choose a file", input)), preview);
  const send = async (file) => {
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    const reply = await call("POST", predictPath(ctx), { body: file, contentType: file.type || "application/octet-stream" });
    const snippets = imageSnippets({ origin: location.origin, model: ctx.model, version: ctx.version, fileName: file.name, type: file.type, keys: ctx.keys });
    showAnswer(ctx, reply, topK(reply), snippets);
  };
  input.addEventListener("change", () => input.files[0] && send(input.files[0]));
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) send(file);
  });
  fill(pane, zone);
}

function topK(reply) {
  const predictions = reply.ok && reply.data ? reply.data.predictions : null;
  const first = Array.isArray(predictions) && Array.isArray(predictions[0]) ? predictions[0] : predictions;
  if (!Array.isArray(first) || !first.every((p) => p && "label" in p && "score" in p)) return null;
  return h("table", { class: "topk", id: "playground-topk" },
    h("tr", {}, h("th", { text: "label" }), h("th", { text: "score" }), h("th", {})),
    first.map((p, rank) => h("tr", { class: rank === 0 ? "best" : "" },
      h("td", { class: "label", text: p.label }),
      h("td", { class: "num", text: p.score.toFixed(4) }),
      h("td", {}, h("div", { class: "score-bar", style: `width:${Math.max(1, Math.round(p.score * 240))}px` })))));
}

function tensorPane(pane, ctx, infer) {
  const editor = h("textarea", { class: "json", id: "playground-json", spellcheck: "false", rows: 12 });
  const example = () => {
    const metadata = ctx.metadata;
    if (infer) return exampleRequest(metadata);
    const first = metadata && metadata.inputs.length ? exampleTensor(metadata.inputs[0]).data : "hello";
    return { input: first };
  };
  editor.value = JSON.stringify(example(), null, 1);
  const regenerate = h("button", { type: "button", text: "New example", onclick: () => (editor.value = JSON.stringify(example(), null, 1)) });
  const send = h("button", { type: "button", class: "primary", id: "playground-send", text: infer ? "Infer" : "Predict" });
  send.addEventListener("click", async () => {
    let body;
    try {
      body = JSON.parse(editor.value);
    } catch (error) {
      fill(ctx.answer, h("p", { class: "error", text: `not JSON: ${error.message}` }));
      return;
    }
    await sendJson(ctx, body, infer);
  });
  const route = infer ? "POST /v2/models/{model}/infer (OIP JSON tensors)" : "POST /predict/{model} (JSON)";
  fill(pane, h("p", { class: "muted", text: route }), editor, h("div", { class: "row" }, regenerate, send));
}

function textPane(pane, ctx) {
  const editor = h("textarea", { class: "json", id: "playground-text", rows: 6, placeholder: "one example per line" });
  editor.value = "The model reads each line as one example.";
  const send = h("button", { type: "button", class: "primary", id: "playground-send", text: "Infer" });
  send.addEventListener("click", () => {
    const lines = editor.value.split("\n").filter((line) => line.length);
    return sendJson(ctx, textRequest(ctx.metadata, lines), true);
  });
  fill(pane, h("p", { class: "muted", text: "Text for the BYTES input, one example per line: POST /v2/models/{model}/infer" }), editor, h("div", { class: "row" }, send));
}

async function sendJson(ctx, body, infer) {
  const path = infer ? `/v2/models/${seg(ctx.model)}${ctx.version ? `/versions/${seg(ctx.version)}` : ""}/infer` : predictPath(ctx);
  const reply = await call("POST", path, { json: body });
  const snippets = jsonSnippets({ origin: location.origin, model: ctx.model, version: ctx.version, body, infer, keys: ctx.keys });
  let view = null;
  if (reply.ok && infer && reply.data && Array.isArray(reply.data.outputs)) {
    view = h("pre", { class: "output", id: "playground-output", text: JSON.stringify({ ...reply.data, outputs: reply.data.outputs.map(shortTensor) }, null, 1) });
  }
  showAnswer(ctx, reply, view || topK(reply), snippets);
}

function predictPath(ctx) {
  return `/predict/${seg(ctx.model)}${ctx.version ? `/versions/${seg(ctx.version)}` : ""}`;
}

function showAnswer(ctx, reply, view, snippets) {
  const version = reply.version || (reply.data && (reply.data.version || reply.data.model_version));
  const status = reply.ok
    ? h("p", { class: "ok", id: "playground-status" }, `${reply.status} in ${reply.ms.toFixed(1)} ms`, version ? `, answered by version ${version}` : "")
    : h("p", { class: "error", id: "playground-status" }, `${reply.status || "no answer"}: ${failure(reply)}`);
  const raw = reply.ok && !view ? h("pre", { class: "output", id: "playground-output", text: JSON.stringify(reply.data, null, 1) }) : null;
  fill(ctx.answer, status, view, raw, h("div", { class: "snippets" }, codeBlock("curl", snippets.curl), codeBlock("Python (modelbay.client)", snippets.python)));
  if (ctx.onAnswer) ctx.onAnswer();
}
