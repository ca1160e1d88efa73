#!/usr/bin/env node
// Stream an rnnexport bundle's test vectors through onnxruntime-node and check them.
//
//   node check_bundle.js BUNDLE_DIR|BUNDLE.zip [--atol 1e-5] [--rtol 1e-4]
//
// Reads manifest.json (schema rnnexport.bundle/1 or /2) from a bundle folder or zip, checks
// every listed file's SHA-256 (reading nothing else, and no path outside the bundle),
// loads each graph (with the weights file it shares, when its manifest entry names one:
// every external-data reference in the graph must read from that file, inside it, and
// onnxruntime gets the file's bytes, so it reads nothing from disk) and runs every test data set (input_K.pb / output_K.pb, in graph
// input / output order). For a stream (kind "stream"), every call after the first takes
// its state inputs from the previous call's state outputs, as an app does. An element
// passes when |got - want| <= atol + rtol * |want|: the test set's `tolerance` in the
// manifest when it has one, else 1e-5 and 1e-4; --atol / --rtol override both. A graph the
// manifest marks "nan": "refuse" has no NaN guards, so as an app must, this refuses NaN or
// Inf in its float inputs before running it.
// Prints one line per set; exits 1 on any mismatch, 2 on a bad bundle.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const AdmZip = require("adm-zip");
const { onnx } = require("onnx-proto");
const ort = require("onnxruntime-node");

const SCHEMAS = ["rnnexport.bundle/1", "rnnexport.bundle/2"]; // /2: the graphs share a weights file
const DEFAULTS = { atol: 1e-5, rtol: 1e-4 };
const MAX_ENTRIES = 4096; // files in a bundle
const MAX_BYTES = 4 * 2 ** 30; // what a zip's entries may inflate to, all together
const USAGE = "usage: node check_bundle.js BUNDLE_DIR|BUNDLE.zip [--atol 1e-5] [--rtol 1e-4]";

class BundleError extends Error {}

// ---- reading a bundle: a folder or a zip, by relative POSIX path ----

function safePath(name, what) {
  const unsafe = typeof name !== "string" || !name || name.length > 512 || /[\\\0]/.test(name) ||
    name.startsWith("/") || /^[A-Za-z]:/.test(name) || name.split("/").includes("..");
  if (unsafe) throw new BundleError(`${what} names an unsafe path ${JSON.stringify(name)}: only paths inside the bundle are allowed`);
  return path.posix.normalize(name);
}

function openFolder(root) {
  const real = fs.realpathSync(root);
  return (name) => {
    const file = path.join(real, ...name.split("/"));
    if (!fs.existsSync(file)) return null;
    if (!fs.realpathSync(file).startsWith(real + path.sep)) throw new BundleError(`${name} links outside the bundle`);
    return fs.readFileSync(file);
  };
}

function openZip(file) {
  let entries;
  try {
    entries = new AdmZip(file).getEntries();
  } catch (e) {
    throw new BundleError(`cannot read ${file} as a zip: ${e.message}`);
  }
  if (entries.length > MAX_ENTRIES) throw new BundleError(`${file} holds ${entries.length} entries (at most ${MAX_ENTRIES})`);
  const byName = new Map();
  let total = 0;
  for (const entry of entries.filter((e) => !e.isDirectory)) {
    const name = safePath(entry.entryName, `zip ${file}`);
    if (((entry.header.attr >>> 16) & 0o170000) === 0o120000) throw new BundleError(`zip ${file}: ${name} is a link`);
    if (byName.has(name)) throw new BundleError(`zip ${file} holds ${name} twice`);
    total += entry.header.size;
    if (total > MAX_BYTES) throw new BundleError(`zip ${file} inflates to over ${MAX_BYTES} bytes`);
    byName.set(name, entry);
  }
  return (name) => {
    const entry = byName.get(name);
    if (!entry) return null;
    try {
      return entry.getData();
    } catch (e) {
      throw new BundleError(`zip ${file}: ${name} is damaged (${e.message})`);
    }
  };
}

// The manifest and every file it lists, checked: { manifest, files: Map(path -> Buffer) }.
function readBundle(where) {
  if (!fs.existsSync(where)) throw new BundleError(`${where} does not exist`);
  const read = fs.statSync(where).isDirectory() ? openFolder(where) : openZip(where);
  const text = read("manifest.json");
  if (!text) throw new BundleError(`${where} holds no manifest.json: not an rnnexport bundle`);
  let manifest;
  try {
    manifest = JSON.parse(text.toString("utf8"));
  } catch (e) {
    throw new BundleError(`manifest.json of ${where} is not JSON (${e.message})`);
  }
  if (!SCHEMAS.includes(manifest.schema)) throw new BundleError(`bundle schema ${JSON.stringify(manifest.schema)}; this reads ${SCHEMAS.join(" and ")}`);
  const listed = Array.isArray(manifest.files) ? manifest.files : [];
  if (!listed.length || listed.length > MAX_ENTRIES) throw new BundleError(`the manifest lists ${listed.length} files (1 to ${MAX_ENTRIES})`);
  const files = new Map();
  for (const entry of listed) {
    const name = safePath(entry.path, "the manifest");
    const data = read(name);
    if (!data) throw new BundleError(`bundle lacks ${name}`);
    const digest = crypto.createHash("sha256").update(data).digest("hex");
    if (digest !== entry.sha256) throw new BundleError(`checksum mismatch: ${name} does not match the manifest`);
    files.set(name, data);
  }
  return { manifest, files };
}

// ---- a graph's external data: every tensor that keeps its bytes in another file ----
// Read from the protobuf wire format (onnx.proto's field numbers), so that no tensor is missed
// wherever it sits: initializers, subgraphs, node attributes, sparse tensors, functions, training graphs.

const HOLDS = { // message -> { field number: message it holds }
  model: { 7: "graph", 20: "training", 25: "function" },
  graph: { 1: "node", 5: "tensor", 15: "sparse" },
  node: { 5: "attribute" },
  attribute: { 5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse" },
  function: { 7: "node", 11: "attribute" },
  training: { 1: "graph", 2: "graph" },
  sparse: { 1: "tensor", 2: "tensor" },
};

function* fields(bytes, start, end) { // [field, wire type, value or start, end]
  const varint = () => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      if (start >= end || shift > 63) throw new BundleError("a graph is not a well-formed ONNX model");
      const byte = bytes[start++];
      value += (byte & 0x7f) * 2 ** shift;
      if (!(byte & 0x80)) return value;
    }
  };
  while (start < end) {
    const key = varint();
    const [field, wire] = [Math.floor(key / 8), key % 8];
    if (wire === 0) yield [field, wire, varint(), start];
    else if (wire === 1 || wire === 5) start += wire === 1 ? 8 : 4;
    else if (wire === 2) {
      const size = varint();
      if (size > end - start) throw new BundleError("a graph is not a well-formed ONNX model");
      yield [field, wire, start, start + size];
      start += size;
    } else throw new BundleError("a graph is not a well-formed ONNX model");
    if (start > end) throw new BundleError("a graph is not a well-formed ONNX model");
  }
}

// [{ tensor, location, offset, length }] of every tensor with external data.
function externalRefs(bytes, kind = "model", start = 0, end = bytes.length, depth = 0, found = []) {
  if (depth > 64) throw new BundleError("a graph nests over 64 deep");
  const text = (a, b) => Buffer.from(bytes.subarray(a, b)).toString("utf8");
  for (const [field, wire, a, b] of fields(bytes, start, end)) {
    const inner = HOLDS[kind][field];
    if (!inner || wire !== 2) continue;
    if (inner !== "tensor") { externalRefs(bytes, inner, a, b, depth + 1, found); continue; }
    let name = "", external = false;
    const entries = [];
    for (const [f, w, c, d] of fields(bytes, a, b)) {
      if (f === 8 && w === 2) name = text(c, d);
      else if (f === 14 && w === 0) external = c === 1;
      else if (f === 13 && w === 2) {
        const entry = {};
        for (const [g, x, e, h] of fields(bytes, c, d)) if (x === 2 && (g === 1 || g === 2)) entry[g === 1 ? "key" : "value"] = text(e, h);
        entries.push(entry);
      }
    }
    if (!external && !entries.length) continue;
    const values = Object.fromEntries(entries.map((e) => [e.key, e.value]));
    const number = (key) => (values[key] === undefined ? undefined : /^[0-9]{1,15}$/.test(values[key]) ? Number(values[key]) : NaN);
    found.push({ tensor: name, location: values.location, offset: number("offset") ?? 0, length: number("length") });
  }
  return found;
}

// The session options that hand onnxruntime the graph's weights file (checked), or refuse the graph.
function externalDataOf(graph, bytes, files) {
  const refs = externalRefs(bytes);
  if (!refs.length) return {};
  const weights = graph.weights === undefined ? null : safePath(graph.weights, `graph ${graph.file}`);
  const folder = path.posix.dirname(graph.file);
  if (weights && path.posix.dirname(weights) !== folder) throw new BundleError(`graph ${graph.file}: its weights ${weights} are not beside it`);
  const location = weights && path.posix.basename(weights);
  const data = weights && files.get(weights);
  for (const ref of refs) {
    if (!data || ref.location !== location) {
      throw new BundleError(`graph ${graph.file} reads tensor ${ref.tensor} from ${JSON.stringify(ref.location)}, which its manifest entry does not name as its weights`);
    }
    const length = ref.length ?? data.length - ref.offset;
    if (!(ref.offset >= 0 && length >= 0 && ref.offset + length <= data.length)) {
      throw new BundleError(`graph ${graph.file} reads tensor ${ref.tensor} from bytes ${ref.offset} to ${ref.offset + length} of ${weights}, which holds ${data.length}`);
    }
  }
  return { externalData: [{ path: location, data: new Uint8Array(data) }] };
}

// ---- test vectors: one TensorProto per .pb file, decoded by onnx-proto ----

const DTYPES = { // TensorProto.DataType -> [ort type, typed array, field of non-raw values]
  1: ["float32", Float32Array, "floatData"],
  6: ["int32", Int32Array, "int32Data"],
  7: ["int64", BigInt64Array, "int64Data"],
  11: ["float64", Float64Array, "doubleData"],
};

function decodeTensor(bytes, where) {
  let t;
  try {
    t = onnx.TensorProto.toObject(onnx.TensorProto.decode(bytes), { longs: String, arrays: true });
  } catch (e) {
    throw new BundleError(`${where} is not a serialized TensorProto (${e.message})`);
  }
  const [type, Typed, field] = DTYPES[t.dataType] || [];
  if (!type) throw new BundleError(`${where}: tensor ${t.name} has data_type ${t.dataType}, not float32, float64, int32 or int64`);
  const dims = t.dims.map(Number);
  const raw = t.rawData && t.rawData.length ? new Uint8Array(t.rawData) : null; // a copy: aligned
  if (raw && raw.length % Typed.BYTES_PER_ELEMENT) throw new BundleError(`${where}: raw_data of ${raw.length} bytes`);
  const data = raw ? new Typed(raw.buffer) : Typed.from(t[field], type === "int64" ? BigInt : Number);
  if (data.length !== dims.reduce((a, b) => a * b, 1)) throw new BundleError(`${where}: ${data.length} values for dims [${dims}]`);
  return { name: t.name, tensor: new ort.Tensor(type, data, dims) };
}

// The tensors of one test set in order: input_0.pb, input_1.pb, ... (or output_K.pb).
function readTensors(files, dir, prefix) {
  const pattern = new RegExp(`^${prefix}_(\\d{1,3})\\.pb$`);
  const numbered = [];
  for (const name of files.keys()) {
    const match = name.startsWith(`${dir}/`) && pattern.exec(name.slice(dir.length + 1));
    if (match) numbered[Number(match[1])] = name;
  }
  if (!numbered.length || numbered.includes(undefined)) {
    throw new BundleError(`test set ${dir} needs ${prefix}_0.pb, ${prefix}_1.pb, ... numbered without gaps`);
  }
  return numbered.map((name) => decodeTensor(files.get(name), name));
}

// ---- comparing: atol + rtol * |want|, as rnnexport verify does ----

function toleranceOf(set, options) {
  const recorded = set.tolerance || {};
  const pick = (key) => {
    const value = options[key] ?? recorded[key] ?? DEFAULTS[key];
    if (typeof value !== "number" || !(value >= 0)) throw new BundleError(`test set ${set.dir} has tolerance ${key} ${JSON.stringify(value)}: expected a number >= 0`);
    return value;
  };
  return { atol: pick("atol"), rtol: pick("rtol") };
}

// { maxAbs, passed } of got against want (NaN where both are NaN counts as equal).
function compare(got, want, tol) {
  if (got.dims.join(",") !== want.dims.join(",")) return { maxAbs: Infinity, passed: false };
  let maxAbs = 0;
  let passed = true;
  for (let i = 0; i < want.data.length; i++) {
    const a = Number(got.data[i]);
    const b = Number(want.data[i]);
    if (a === b || (Number.isNaN(a) && Number.isNaN(b))) continue;
    const diff = Number.isNaN(a - b) ? Infinity : Math.abs(a - b);
    maxAbs = Math.max(maxAbs, diff);
    if (!(diff <= tol.atol + tol.rtol * Math.abs(b))) passed = false;
  }
  return { maxAbs, passed };
}

// ---- running the sets ----

function parseArgs(argv) {
  const options = {};
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const key = { "--atol": "atol", "--tolerance": "atol", "--rtol": "rtol" }[argv[i]];
    if (!key) { rest.push(argv[i]); continue; }
    options[key] = Number(argv[++i]);
    if (!(options[key] >= 0)) throw new BundleError(`${argv[i - 1]} takes a number >= 0; ${USAGE}`);
  }
  if (rest.length !== 1) throw new BundleError(USAGE);
  return { where: rest[0], options };
}

function stateOf(manifest) {
  const state = manifest.state || (manifest.io || {}).state || {};
  const valid = Array.isArray(state.names) && Array.isArray(state.output_names) && state.names.length === state.output_names.length;
  if (!valid) throw new BundleError("the manifest's state lacks names and output_names of one length");
  return state;
}

// A graph converted with --nan refuse gives finite values for NaN input on some engines: refuse such input.
function refuseNonFinite(name, tensor) {
  if (tensor.type !== "float32" && tensor.type !== "float64" && tensor.type !== "float16") return;
  const data = tensor.type === "float16" ? Array.from(tensor.data, Number) : tensor.data;
  const at = data.findIndex((v) => !Number.isFinite(v));
  if (at >= 0) throw new BundleError(`${name} holds ${data[at]} at flat index ${at}: the graph refuses NaN and Inf input (its manifest says nan: refuse); clean the input first`);
}

async function runSet(session, set, files, manifest, previous, refuses) {
  const inputs = readTensors(files, set.dir, "input");
  const expected = readTensors(files, set.dir, "output");
  const feeds = {};
  session.inputNames.forEach((name, k) => {
    if (!inputs[k] || inputs[k].name !== name) throw new BundleError(`${set.dir}/input_${k}.pb is not the graph input ${name}`);
    feeds[name] = inputs[k].tensor;
  });
  const key = `${set.graph}/${set.stream}`;
  if (set.kind === "stream" && set.call > 0) {
    const last = previous.get(key);
    if (!last) throw new BundleError(`test set ${set.dir}: call ${set.call} of stream ${set.stream} has no previous call`);
    const { names, output_names: outNames } = stateOf(manifest);
    names.forEach((name, i) => { feeds[name] = last[outNames[i]]; }); // state in = previous state out
  }
  if (refuses) Object.entries(feeds).forEach(([name, tensor]) => refuseNonFinite(name, tensor));
  const results = await session.run(feeds);
  if (set.kind === "stream") previous.set(key, results);
  return session.outputNames.map((name, k) => {
    if (!expected[k] || expected[k].name !== name) throw new BundleError(`${set.dir}/output_${k}.pb is not the graph output ${name}`);
    return [name, results[name], expected[k].tensor];
  });
}

async function main() {
  const { where, options } = parseArgs(process.argv.slice(2));
  const { manifest, files } = readBundle(where);
  const sets = Array.isArray(manifest.test_vectors) ? manifest.test_vectors : [];
  if (!sets.length) throw new BundleError("the manifest lists no test vectors");
  const sessions = new Map();
  const previous = new Map(); // stream key -> outputs of its last call
  let failures = 0;
  for (const set of sets) {
    const graph = (manifest.graphs || {})[set.graph];
    if (!graph) throw new BundleError(`test set ${set.dir} names graph ${set.graph}, which the manifest lacks`);
    const file = safePath(graph.file, `graph ${set.graph}`);
    if (!files.has(file)) throw new BundleError(`graph ${set.graph}: ${file} is not among the manifest's files`);
    if (!sessions.has(file)) {
      const bytes = files.get(file);
      sessions.set(file, await ort.InferenceSession.create(bytes, externalDataOf(graph, bytes, files)));
    }
    const dir = safePath(set.dir, "a test set");
    const tol = toleranceOf(set, options);
    const outputs = await runSet(sessions.get(file), { ...set, dir }, files, manifest, previous, graph.nan === "refuse");
    const figures = outputs.map(([name, got, want]) => [name, compare(got, want, tol)]);
    const ok = figures.every(([, f]) => f.passed);
    if (!ok) failures++;
    const what = set.kind === "stream" ? `stream ${set.stream} call ${set.call}` : set.kind;
    const errors = figures.map(([name, f]) => `${name} ${f.maxAbs.toExponential(2)}`).join(", ");
    const own = tol.atol !== (options.atol ?? DEFAULTS.atol) || tol.rtol !== (options.rtol ?? DEFAULTS.rtol);
    const note = own ? ` (atol ${tol.atol}, rtol ${tol.rtol})` : "";
    console.log(`${ok ? "ok  " : "FAIL"} ${dir} (${set.graph}, ${what}): max abs error ${errors}${note}`);
  }
  const atol = options.atol ?? DEFAULTS.atol;
  const rtol = options.rtol ?? DEFAULTS.rtol;
  console.log(`${sets.length - failures} passed, ${failures} failed (|got - want| <= ${atol} + ${rtol} * |want|)`);
  return failures ? 1 : 0;
}

main().then((code) => { process.exitCode = code; }, (e) => {
  console.error(`error: ${String(e.message || e).split("\n")[0]}`);
  process.exitCode = 2;
});
