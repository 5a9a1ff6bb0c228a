// The folders a user adds (examples/*, bench), found by looking, so a new one
// is generated and type-checked without an edit of tsconfig.json or buf.yaml.
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";

/** Folders under examples/ and bench, relative to `root`. */
export function userFolders(root) {
  const examples = existsSync(join(root, "examples")) ? readdirSync(join(root, "examples")).map((d) => join("examples", d)) : [];
  return [...examples, "bench"].filter((d) => existsSync(join(root, d)));
}

/** The user folders with protos to generate code from. */
export function protoFolders(root) {
  return userFolders(root).filter((d) => existsSync(join(root, d, "proto")));
}

/**
 * `tsc` arguments that build every user folder with a tsconfig.json, whether
 * or not the root tsconfig.json lists it: a folder left out would not be
 * type-checked at all, and a type error (a state write in a shared handler)
 * would build green.
 */
export function userBuildArgs(root) {
  return ["-b", ...userFolders(root).filter((d) => existsSync(join(root, d, "tsconfig.json")))];
}
