// One onnxruntime JavaScript engine behind a line protocol, for rnnexport's verify runners.
//
//   node engine.js node|wasm MODEL.onnx [LOCATION ...]
//
// Each LOCATION is an external data file the graph reads (a bundle's shared weights), beside
// MODEL.onnx: its bytes are handed to onnxruntime's externalData option, as an app does.
// Reads one JSON request per line on stdin: {"feeds": [{"name", "dtype", "shape", "data" (base64)}]}
// and writes one JSON line per request: {"outputs": [...same fields...]} or {"error": "..."}.
// The first line written is {"ready": true, "inputs": [...], "outputs": [...]} once the session loaded.
"use strict";

const fs = require("fs");
const path = require("path");
const readline = require("readline");

const [engine, modelPath, ...locations] = process.argv.slice(2);
const ARRAYS = { float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array };

function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function loadOrt() {
  if (engine === "node") return require("onnxruntime-node");
  if (engine === "wasm") {
    const ort = require("onnxruntime-web");
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.wasmPaths = path.join(path.dirname(require.resolve("onnxruntime-web")), path.sep);
    return ort;
  }
  throw new Error(`unknown engine ${engine}: expected node or wasm`);
}

function toTensor(ort, feed) {
  const bytes = Buffer.from(feed.data, "base64");
  const Array = ARRAYS[feed.dtype];
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return new ort.Tensor(feed.dtype, new Array(copy.buffer), feed.shape);
}

function fromTensor(name, tensor) {
  const data = tensor.data;
  const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return { name, dtype: tensor.type, shape: tensor.dims, data: bytes.toString("base64") };
}

async function main() {
  const ort = loadOrt();
  const options = { executionProviders: [engine === "node" ? "cpu" : "wasm"], intraOpNumThreads: 1 };
  if (locations.length) {
    const folder = path.dirname(modelPath);
    options.externalData = locations.map((location) => ({ path: location, data: fs.readFileSync(path.join(folder, location)) }));
  }
  const session = await ort.InferenceSession.create(fs.readFileSync(modelPath), options);
  send({ ready: true, inputs: session.inputNames, outputs: session.outputNames });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    try {
      const request = JSON.parse(line);
      const feeds = {};
      for (const feed of request.feeds) feeds[feed.name] = toTensor(ort, feed);
      const results = await session.run(feeds);
      send({ outputs: session.outputNames.map((name) => fromTensor(name, results[name])) });
    } catch (error) {
      send({ error: String(error && error.message ? error.message : error).split("\n")[0] });
    }
  }
}

main().catch((error) => {
  send({ error: String(error && error.message ? error.message : error).split("\n")[0], fatal: true });
  process.exit(1);
});
