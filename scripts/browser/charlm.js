// Streams a char model from an rnnexport bundle with onnxruntime-web: the prompt is fed one
// character per step, then each step's greedy pick (argmax of the logits) is fed back, and the
// state outputs of every call become the state inputs of the next. No build step.
//
// URL query: ?prompt=...&length=200. The page reads, from the server it came from:
//   /ort/                onnxruntime-web's dist files
//   /bundle/manifest.json and the graph it names, with the weights file it shares when the
//                        manifest names one (each SHA-256 checked against the manifest)
//   /vocabulary.json     {"vocabulary": "...", "prompt": "..."} (a model card will do), read only
//                        when the manifest records no io.vocabulary
// and posts {text, ...} (or {error}) to /result when done.
import * as ort from "/ort/ort.wasm.min.mjs";

const SCHEMAS = ["rnnexport.bundle/1", "rnnexport.bundle/2"]; // /2: the graphs share a weights file
const query = new URLSearchParams(location.search);
const show = (id) => document.getElementById(id);

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response;
}

async function sha256(bytes) {
  if (!crypto.subtle) throw new Error("no crypto.subtle: serve the page from 127.0.0.1, localhost or https");
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// A file of the bundle as bytes, checked against the manifest's SHA-256.
async function loadFile(manifest, file) {
  const listed = (manifest.files ?? []).find((f) => f.path === file);
  if (!listed || file.split("/").includes("..")) throw new Error(`the manifest lists no checksum for ${file}`);
  const bytes = new Uint8Array(await (await fetchOk(`/bundle/${file}`)).arrayBuffer());
  if (await sha256(bytes) !== listed.sha256) throw new Error(`checksum mismatch: ${file} does not match the manifest`);
  return bytes;
}

// The step graph (or a sequence graph that takes T=1) as bytes, and the session options that hand
// onnxruntime-web the weights file it shares (it reads external data only from what it is given).
async function loadGraph(manifest) {
  const graph = manifest.graphs?.step ?? manifest.graphs?.sequence;
  if (!graph || (graph.form === "sequence" && graph.seq_len)) throw new Error("the bundle has no step graph");
  const bytes = await loadFile(manifest, graph.file);
  if (!graph.weights) return { graph, bytes, options: {} };
  const folder = graph.file.split("/").slice(0, -1).join("/");
  const location = graph.weights.split("/").pop();
  if (graph.weights.split("/").slice(0, -1).join("/") !== folder) throw new Error(`${graph.weights} is not beside ${graph.file}`);
  const weights = await loadFile(manifest, graph.weights);
  return { graph, bytes, options: { externalData: [{ path: location, data: weights }] } };
}

// The characters of the one-hot input, in order: the manifest's (io.vocabulary, a list of
// strings), else vocabulary.json's (for a bundle of a model without one).
async function loadVocabulary(manifest, size) {
  let source = manifest.io?.vocabulary ? { vocabulary: manifest.io.vocabulary } : null;
  if (!source) {
    const response = await fetch("/vocabulary.json");
    if (!response.ok) throw new Error("the manifest records no vocabulary, and /vocabulary.json is missing (serve.py --vocabulary FILE)");
    source = await response.json();
  }
  const vocabulary = Array.from(source.vocabulary ?? []);
  if (vocabulary.length !== size) throw new Error(`the vocabulary has ${vocabulary.length} characters; x takes ${size}`);
  return { vocabulary, prompt: source.prompt };
}

// One stream (B = 1) through the graph: step(index) feeds one one-hot character, returns the logits.
class CharStream {
  constructor(session, graph, io, size) {
    this.session = session;
    this.size = size;
    this.names = io.state.names;
    this.outNames = io.state.output_names;
    this.x = session.inputNames.find((n) => !this.names.includes(n));
    this.y = session.outputNames.find((n) => !this.outNames.includes(n));
    this.xDims = graph.form === "step" ? [1, size] : [1, 1, size];
    // a new stream starts from the contract's initial state: zeros, or one stream's recorded values
    const initial = io.state.initial && io.state.initial.values;
    this.state = {};
    io.state.shapes.forEach((shape, i) => {
      const dims = shape.map((d) => (d === "B" ? 1 : d));
      const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
      if (initial) data.set(initial[i]);
      this.state[this.names[i]] = new ort.Tensor("float32", data, dims);
    });
  }

  async step(index) {
    const x = new Float32Array(this.size);
    x[index] = 1;
    const results = await this.session.run({ ...this.state, [this.x]: new ort.Tensor("float32", x, this.xDims) });
    this.names.forEach((name, i) => { this.state[name] = results[this.outNames[i]]; }); // carry the state
    return results[this.y].data;
  }
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

async function main() {
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = "/ort/";
  const manifest = await (await fetchOk("/bundle/manifest.json")).json();
  if (!SCHEMAS.includes(manifest.schema)) throw new Error(`bundle schema ${JSON.stringify(manifest.schema)}; this page reads ${SCHEMAS.join(" and ")}`);
  const io = manifest.io;
  if (io.x_encoding !== "one-hot" || io.x_features.length !== 1) throw new Error(`x is ${io.x_encoding}, not one-hot characters`);
  const size = io.x_features[0];
  const { vocabulary, prompt: cardPrompt } = await loadVocabulary(manifest, size);
  const prompt = query.get("prompt") ?? cardPrompt ?? "the ";
  const length = Number(query.get("length") ?? 200);
  if (!prompt || !(Number.isInteger(length) && length >= 0 && length <= 100000)) throw new Error("give a prompt and a length from 0 to 100000");
  const unknown = [...prompt].filter((c) => !vocabulary.includes(c));
  if (unknown.length) throw new Error(`the prompt holds characters outside the vocabulary: ${JSON.stringify(unknown.join(""))}`);

  const { graph, bytes, options } = await loadGraph(manifest);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], ...options });
  const stream = new CharStream(session, graph, io, size);
  show("status").textContent = `${manifest.model?.description ?? "model"}: ${graph.file} on onnxruntime-web ${ort.env.versions.web}`;
  show("prompt").textContent = prompt;

  const start = performance.now();
  let logits;
  for (const char of prompt) logits = await stream.step(vocabulary.indexOf(char));
  let text = "";
  for (let i = 0; i < length; i++) {
    const index = argmax(logits);
    text += vocabulary[index];
    show("generated").textContent = text;
    logits = await stream.step(index);
  }
  const ms = performance.now() - start;
  const steps = [...prompt].length + length;
  show("status").textContent += ` · ${steps} steps in ${ms.toFixed(0)} ms`;
  return { prompt, text, steps, ms };
}

async function report(result) {
  document.body.dataset.done = result.error ? "error" : "ok";
  await fetch("/result", { method: "POST", body: JSON.stringify(result) }).catch(() => {});
}

main().then(report, (error) => {
  const message = String(error?.message ?? error).split("\n")[0];
  show("status").textContent = `error: ${message}`;
  show("status").className = "error";
  return report({ error: message });
});
