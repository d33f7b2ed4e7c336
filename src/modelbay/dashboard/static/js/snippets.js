// The playground's call written out to copy: as curl and as Python (modelbay.client).

const NUMPY = {
  BOOL: "np.bool_", UINT8: "np.uint8", UINT16: "np.uint16", UINT32: "np.uint32", UINT64: "np.uint64",
  INT8: "np.int8", INT16: "np.int16", INT32: "np.int32", INT64: "np.int64",
  FP16: "np.float16", FP32: "np.float32", FP64: "np.float64", BYTES: "object",
};
const INLINE_CHARS = 4000; // a request longer than this is written to a file instead of inline

/** `text` quoted for a POSIX shell. */
export function shellQuote(text) {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

function curlAuth(keys) {
  return keys ? ` \\\n  -H "Authorization: Bearer $MODELBAY_API_KEY"` : "";
}

function pythonClient(origin, keys) {
  const key = keys ? `, api_key=os.environ["MODELBAY_API_KEY"]` : "";
  return `with Client(${JSON.stringify(origin)}${key}) as client:`;
}

function path(prefix, model, version) {
  const named = `${prefix}/${encodeURIComponent(model)}`;
  return version ? `${named}/versions/${encodeURIComponent(version)}` : named;
}

/** curl and Python for an image (file `fileName`, type `type`) sent to /predict. */
export function imageSnippets({ origin, model, version, fileName, type, keys }) {
  const url = origin + path("/predict", model, version);
  const name = fileName || "image.png";
  const curl = `curl -X POST -H "Content-Type: ${type || "application/octet-stream"}"${curlAuth(keys)} \\\n  --data-binary @${shellQuote(name)} ${url}`;
  const versionArg = version ? `, version=${JSON.stringify(version)}` : "";
  const python = [
    keys ? "import os\n" : "",
    "from pathlib import Path\n\nfrom modelbay.client import Client\n\n",
    `${pythonClient(origin, keys)}\n`,
    `    print(client.predict(${JSON.stringify(model)}, Path(${JSON.stringify(name)})${versionArg}))\n`,
  ].join("");
  return { curl, python };
}

/** curl and Python for a JSON body (`body`, an object) POSTed to the OIP infer route (`infer`
 *  true) or to /predict. `request` is the OIP request when infer, used for the Python arrays. */
export function jsonSnippets({ origin, model, version, body, infer, keys }) {
  const url = infer ? origin + path("/v2/models", model, version) + "/infer" : origin + path("/predict", model, version);
  const text = JSON.stringify(body);
  const inline = text.length <= INLINE_CHARS;
  const data = inline ? shellQuote(text) : "@request.json";
  const note = inline ? "" : "# the request above, saved as request.json\n";
  const curl = `${note}curl -X POST -H "Content-Type: application/json"${curlAuth(keys)} \\\n  -d ${data} ${url}`;
  const versionArg = version ? `, version=${JSON.stringify(version)}` : "";
  const lines = [keys ? "import os\n\n" : "", infer ? "import numpy as np\n" : "", "from modelbay.client import Client\n\n"];
  if (infer) {
    lines.push("inputs = {\n");
    for (const tensor of body.inputs || []) lines.push(`    ${JSON.stringify(tensor.name)}: ${pythonArray(tensor)},\n`);
    lines.push("}\n");
  } else {
    const value = JSON.stringify(body.input !== undefined ? body.input : body);
    lines.push(`data = ${value.length <= INLINE_CHARS ? pythonLiteral(value) : "...  # your example"}\n`);
  }
  lines.push(`${pythonClient(origin, keys)}\n`);
  const callText = infer ? `client.infer(${JSON.stringify(model)}, inputs${versionArg})` : `client.predict(${JSON.stringify(model)}, data${versionArg})`;
  lines.push(`    print(${callText})\n`);
  return { curl, python: lines.join("") };
}

function pythonArray(tensor) {
  const dtype = NUMPY[tensor.datatype] || "np.float32";
  const shape = `(${tensor.shape.join(", ")}${tensor.shape.length === 1 ? "," : ""})`;
  const data = JSON.stringify(tensor.data);
  if (data.length > INLINE_CHARS) return `np.zeros(${shape}, dtype=${dtype})  # your data here`;
  return `np.array(${pythonLiteral(data)}, dtype=${dtype}).reshape(${shape})`;
}

/** A JSON text as a Python literal (true/false/null spelled the Python way). */
function pythonLiteral(json) {
  return json.replace(/("(?:[^"\\]|\\.)*")|\btrue\b|\bfalse\b|\bnull\b/g, (match, string) => {
    if (string) return string;
    return { true: "True", false: "False", null: "None" }[match];
  });
}
