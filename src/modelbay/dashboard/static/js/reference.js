// The interactive API reference: Swagger UI (vendored) over this server's own /openapi.json, with
// the model and version fields, and the bodies of infer, default and traffic, starting from a
// model this server serves, so "Try it out" sends a valid request as it stands.

import { apiKey, call, seg } from "./api.js";
import { exampleRequest } from "./playground.js";

/** Put `model`'s name, its default version and valid bodies as examples into `document`. */
export function withExamples(document, model, metadata) {
  for (const [path, item] of Object.entries(document.paths)) {
    for (const operation of Object.values(item)) {
      for (const parameter of operation.parameters || []) {
        if (parameter.in !== "path") continue;
        if (parameter.name === "model") parameter.example = model.name;
        if (parameter.name === "version") parameter.example = model.default_version;
      }
      const json = operation.requestBody && operation.requestBody.content["application/json"];
      if (!json) continue;
      if (path.endsWith("/infer") && metadata) json.example = exampleRequest(metadata);
      else if (path.endsWith("/default")) json.example = { version: model.default_version };
      else if (path.endsWith("/traffic")) json.example = { split: { [model.default_version]: 100 } };
      else if (path.startsWith("/v2/repository/")) json.example = {};
    }
  }
  return document;
}

async function start() {
  const document = (await call("GET", "/openapi.json")).data;
  const summary = await call("GET", "/dashboard/api/summary");
  const model = summary.ok ? summary.data.models.find((m) => m.default_version) : null;
  let metadata = null;
  const keys = summary.ok && summary.data.repository_api === "admin key";
  if (model && (!keys || apiKey())) {
    const reply = await call("GET", `/v2/models/${seg(model.name)}/versions/${seg(model.default_version)}`);
    if (reply.ok) metadata = reply.data;
  }
  const ui = window.SwaggerUIBundle({
    spec: model ? withExamples(document, model, metadata) : document,
    dom_id: "#swagger",
    deepLinking: true,
    validatorUrl: null, // the default would ask validator.swagger.io: this page stays offline
    defaultModelsExpandDepth: 0,
  });
  if (apiKey()) ui.preauthorizeApiKey("apiKey", apiKey());
}

start();
