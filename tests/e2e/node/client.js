// A minimal jacserve client in JavaScript, written from the .proto alone (no SDK):
// upload an archive, ask for a Jacobian, and read a refused call's error details.
//
//   node client.js TARGET ARCHIVE INPUTS_JSON PROTO_DIR GOOGLE_PROTO_DIR
//
// Prints one JSON line: {modelId, jacobian: {shape, values}, error: {code, reason, ...}}.
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const [target, archivePath, inputsJson, protoDir, googleDir] = process.argv.slice(2);
const options = { keepCase: true, longs: Number, enums: String, defaults: true };
const definition = loader.loadSync(path.join(protoDir, "jacserve/v1/jacobian_service.proto"), {
  ...options,
  includeDirs: [protoDir],
});
const { JacobianService } = grpc.loadPackageDefinition(definition).jacserve.v1;
const client = new JacobianService(target, grpc.credentials.createInsecure(), {
  "grpc.max_receive_message_length": 64 << 20,
});

function upload(bytes) {
  return new Promise((resolve, reject) => {
    const call = client.UploadModel((error, reply) => (error ? reject(error) : resolve(reply)));
    for (let start = 0; start < bytes.length; start += 1 << 20) {
      call.write({ chunk: bytes.subarray(start, start + (1 << 20)) });
    }
    call.end();
  });
}

function unary(method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, (error, reply) => (error ? reject(error) : resolve(reply))),
  );
}

function float64Tensor(values) {
  // the wire layout: little-endian, row-major; shape as given
  const data = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => data.writeDoubleLE(v, i * 8));
  return { dtype: "DTYPE_FLOAT64", shape: [values.length], data };
}

function decodeFloat64(tensor) {
  const values = [];
  for (let offset = 0; offset < tensor.data.length; offset += 8) {
    values.push(tensor.data.readDoubleLE(offset));
  }
  return { shape: tensor.shape.map(Number), values };
}

function details(error) {
  // google.rpc.Status in the trailer grpc-status-details-bin; its details are Any messages
  const [raw] = error.metadata ? error.metadata.get("grpc-status-details-bin") : [];
  if (!raw) return { code: error.code, reason: null };
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(googleDir, target);
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
  const status = root.lookupType("google.rpc.Status").decode(raw);
  const found = { code: error.code, statusCode: status.code, reason: null, metadata: {} };
  for (const any of status.details) {
    const typeName = any.type_url.split("/").pop();
    if (typeName === "google.rpc.ErrorInfo") {
      const info = root.lookupType(typeName).decode(any.value);
      found.reason = info.reason;
      found.domain = info.domain;
      found.metadata = info.metadata;
    }
  }
  return found;
}

async function main() {
  const archive = fs.readFileSync(archivePath);
  const uploaded = await upload(archive);
  const modelId = uploaded.model.model_id;
  const inputs = JSON.parse(inputsJson);
  const reply = await unary("Jacobian", {
    function: { model_id: modelId },
    inputs: [float64Tensor(inputs)],
  });
  let error = null;
  try {
    await unary("GetModel", { model_id: "0".repeat(64) });
  } catch (refused) {
    error = details(refused);
  }
  console.log(JSON.stringify({ modelId, jacobian: decodeFloat64(reply.jacobian[0]), error }));
  client.close();
}

main().catch((failure) => {
  console.error(String(failure && failure.stack ? failure.stack : failure));
  process.exit(1);
});
