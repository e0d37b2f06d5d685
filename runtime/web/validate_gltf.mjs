// Print the Khronos glTF validator's JSON report of one .gltf/.glb file (external files resolved beside it).
import { readFile } from "node:fs/promises";
import path from "node:path";
import validator from "gltf-validator";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate_gltf.mjs FILE.glb");
  process.exit(2);
}
const bytes = new Uint8Array(await readFile(file));
const report = await validator.validateBytes(bytes, {
  uri: path.basename(file),
  maxIssues: 200,
  externalResourceFunction: (uri) =>
    readFile(path.resolve(path.dirname(file), decodeURIComponent(uri))).then((b) => new Uint8Array(b)),
});
process.stdout.write(JSON.stringify(report));
