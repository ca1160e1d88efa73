#!/usr/bin/env node
// Stream an rnnexport bundle's test vectors through onnxruntime-node and check them.
//
//   node check_bundle.js BUNDLE_DIR [--tolerance 1e-5]
//
// Reads manifest.json (schema rnnexport.bundle/1), checks every file's SHA-256,
// loads each graph, and runs every test data set (input_K.pb / output_K.pb, in
// graph input / output order). For a stream (kind "stream"), every call after
// the first takes its state inputs from the previous call's state outputs, as
// an app does. Prints one line per set; exits 1 on any mismatch, 2 on a bad bundle.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const ort = require("onnxruntime-node");

const SCHEMA = "rnnexport.bundle/1";

// ---- a minimal TensorProto decoder (onnx.proto3: dims=1, data_type=2, float_data=4,
// int64_data=7, name=8, raw_data=9, double_data=10; other fields are skipped) ----

const DTYPES = { 1: "float32", 6: "int32", 7: "int64", 11: "float64" };

function readVarint(buf, pos) {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new Error("truncated varint");
    const byte = buf[pos++];
    result |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return [BigInt.asIntN(64, result), pos];
    shift += 7n;
  }
}

function decodeTensor(buf) {
  const t = { dims: [], dataType: 0, name: "", floats: [], doubles: [], int64s: [], raw: null };
  let pos = 0;
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) { // varint
      let v;
      [v, pos] = readVarint(buf, pos);
      if (field === 1) t.dims.push(Number(v));
      else if (field === 2) t.dataType = Number(v);
      else if (field === 7) t.int64s.push(v);
    } else if (wire === 2) { // length-delimited
      let len;
      [len, pos] = readVarint(buf, pos);
      const end = pos + Number(len);
      const body = buf.subarray(pos, end);
      if (field === 1 || field === 7) { // packed int64 varints
        for (let p = 0; p < body.length;) {
          let v;
          [v, p] = readVarint(body, p);
          if (field === 1) t.dims.push(Number(v)); else t.int64s.push(v);
        }
      } else if (field === 4) { // packed floats
        for (let p = 0; p < body.length; p += 4) t.floats.push(body.readFloatLE(p));
      } else if (field === 10) { // packed doubles
        for (let p = 0; p < body.length; p += 8) t.doubles.push(body.readDoubleLE(p));
      } else if (field === 8) {
        t.name = body.toString("utf8");
      } else if (field === 9) {
        t.raw = Buffer.from(body); // a copy, so typed arrays over it are aligned
      }
      pos = end;
    } else if (wire === 5) { // fixed32: an unpacked float
      if (field === 4) t.floats.push(buf.readFloatLE(pos));
      pos += 4;
    } else if (wire === 1) { // fixed64: an unpacked double
      if (field === 10) t.doubles.push(buf.readDoubleLE(pos));
      pos += 8;
    } else {
      throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  }
  const type = DTYPES[t.dataType];
  if (!type) throw new Error(`tensor ${t.name}: unsupported data_type ${t.dataType}`);
  const count = t.dims.reduce((a, b) => a * b, 1);
  let data;
  if (t.raw) {
    const ab = t.raw.buffer.slice(t.raw.byteOffset, t.raw.byteOffset + t.raw.byteLength);
    data = { float32: Float32Array, int32: Int32Array, int64: BigInt64Array, float64: Float64Array }[type];
    data = new data(ab);
  } else if (type === "float32") {
    data = Float32Array.from(t.floats);
  } else if (type === "float64") {
    data = Float64Array.from(t.doubles);
  } else if (type === "int64") {
    data = BigInt64Array.from(t.int64s);
  } else {
    data = Int32Array.from(t.int64s.map(Number)); // int32_data (field 5) is not used by onnx's helpers
  }
  if (data.length !== count) throw new Error(`tensor ${t.name}: ${data.length} values for dims [${t.dims}]`);
  return new ort.Tensor(type, data, t.dims);
}

// ---- the bundle ----

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(2);
}

function readManifest(root) {
  let manifest;
  try {
    manifest = JSON.parse(fs.readFileSync(path.join(root, "manifest.json"), "utf8"));
  } catch (e) {
    fail(`cannot read ${path.join(root, "manifest.json")}: ${e.message}`);
  }
  if (manifest.schema !== SCHEMA) fail(`bundle schema ${JSON.stringify(manifest.schema)}; this reads ${SCHEMA}`);
  for (const entry of manifest.files || []) {
    const file = path.join(root, entry.path);
    if (!fs.existsSync(file)) fail(`bundle lacks ${entry.path}`);
    const digest = crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");
    if (digest !== entry.sha256) fail(`checksum mismatch: ${entry.path} does not match the manifest`);
  }
  return manifest;
}

function readSet(dir, prefix) {
  const tensors = [];
  for (let k = 0; fs.existsSync(path.join(dir, `${prefix}_${k}.pb`)); k++) {
    tensors.push(decodeTensor(fs.readFileSync(path.join(dir, `${prefix}_${k}.pb`))));
  }
  return tensors;
}

function maxAbsError(got, want) {
  if (got.dims.join(",") !== want.dims.join(",")) return Infinity;
  let worst = 0;
  for (let i = 0; i < want.data.length; i++) {
    const d = Math.abs(Number(got.data[i]) - Number(want.data[i]));
    if (!(d <= worst)) worst = d; // NaN counts as a mismatch
  }
  return worst;
}

async function main() {
  const args = process.argv.slice(2);
  const tolIndex = args.indexOf("--tolerance");
  const tolerance = tolIndex >= 0 ? Number(args.splice(tolIndex, 2)[1]) : 1e-5;
  if (args.length !== 1) fail("usage: node check_bundle.js BUNDLE_DIR [--tolerance 1e-5]");
  const root = args[0];
  const manifest = readManifest(root);
  const sessions = {};
  const previous = {}; // stream key -> outputs of its last call
  let failures = 0;
  for (const set of manifest.test_vectors || []) {
    const graph = manifest.graphs[set.graph];
    if (!graph) fail(`test set ${set.dir} names graph ${set.graph}, which the manifest lacks`);
    if (!sessions[set.graph]) sessions[set.graph] = await ort.InferenceSession.create(path.join(root, graph.file));
    const session = sessions[set.graph];
    const inputs = readSet(path.join(root, set.dir), "input");
    const expected = readSet(path.join(root, set.dir), "output");
    const streamKey = `${set.graph}/${set.stream}`;
    if (set.kind === "stream" && set.call > 0) {
      const last = previous[streamKey];
      if (!last) fail(`test set ${set.dir}: call ${set.call} of stream ${set.stream} has no previous call`);
      for (let k = 1; k < inputs.length; k++) inputs[k] = last[k]; // state in = previous state out
    }
    const feeds = {};
    session.inputNames.forEach((name, k) => { feeds[name] = inputs[k]; });
    const results = await session.run(feeds);
    const outputs = session.outputNames.map((name) => results[name]);
    if (set.kind === "stream") previous[streamKey] = outputs;
    const errors = session.outputNames.map((name, k) => [name, maxAbsError(outputs[k], expected[k])]);
    const ok = errors.every(([, e]) => e <= tolerance);
    if (!ok) failures++;
    const what = set.kind === "stream" ? `stream ${set.stream} call ${set.call}` : set.kind;
    const figures = errors.map(([n, e]) => `${n} ${e.toExponential(2)}`).join(", ");
    console.log(`${ok ? "ok  " : "FAIL"} ${set.dir} (${set.graph}, ${what}): max abs error ${figures}`);
  }
  const total = (manifest.test_vectors || []).length;
  if (total === 0) fail("the manifest lists no test vectors");
  console.log(`${total - failures} passed, ${failures} failed (tolerance ${tolerance})`);
  process.exit(failures ? 1 : 0);
}

main().catch((e) => fail(e.message.split("\n")[0]));
