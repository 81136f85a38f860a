#!/usr/bin/env node
// Validate a .glb / .gltf with the Khronos glTF-Validator and print its JSON report on stdout.
//   node tools/gltf/validate.js model.glb [--max-issues N]
// Exit code: 0 when the report has no errors, 1 when it has errors, 2 on usage / read failure.
"use strict";
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

const args = process.argv.slice(2);
if (args.length < 1 || args[0] === "-h" || args[0] === "--help") {
  console.error("usage: node validate.js FILE.glb|FILE.gltf [--max-issues N]");
  process.exit(2);
}
const file = path.resolve(args[0]);
const mi = args.indexOf("--max-issues");
const maxIssues = mi >= 0 ? parseInt(args[mi + 1], 10) : 200;

let bytes;
try {
  bytes = new Uint8Array(fs.readFileSync(file));
} catch (err) {
  console.error(`cannot read ${file}: ${err.message}`);
  process.exit(2);
}

validator
  .validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues,
    externalResourceFunction: (uri) =>
      new Promise((resolve, reject) => {
        fs.readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)), (err, data) =>
          err ? reject(err.toString()) : resolve(new Uint8Array(data)));
      }),
  })
  .then((report) => {
    process.stdout.write(JSON.stringify(report, null, 1) + "\n");
    process.exit(report.issues.numErrors > 0 ? 1 : 0);
  })
  .catch((err) => {
    console.error(`validation failed: ${err}`);
    process.exit(2);
  });
