// Helpers shared by the plugin's tests: build a CodeGeneratorRequest from a
// fixture tree under testdata/ with the buf binary from node_modules, and run
// plugins on it in process.
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { create, fromBinary } from "@bufbuild/protobuf";
import {
  type CodeGeneratorRequest,
  CodeGeneratorRequestSchema,
  type CodeGeneratorResponse,
  FileDescriptorSetSchema,
} from "@bufbuild/protobuf/wkt";
import type { Plugin } from "@bufbuild/protoplugin";

/** The monorepo root. */
export const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
/** packages/protoc-gen-shoal. */
export const packageDir = fileURLToPath(new URL("../", import.meta.url));
export const bufBin = join(repoRoot, "node_modules", ".bin", "buf");

/** The parameter of snapshot runs: the plugin's version is elided to keep snapshots stable. */
export const snapshotParameter = "target=ts,import_extension=js,elide_plugin_version=true";

/** The .proto files of a fixture tree, relative to it, sorted. */
export function protoFilesOf(fixtureDir: string): string[] {
  const root = join(packageDir, fixtureDir);
  const walk = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) return walk(path);
      return entry.name.endsWith(".proto") ? [relative(root, path).split(sep).join("/")] : [];
    });
  return walk(root).sort();
}

/**
 * Builds a request for the files of a fixture tree (a directory under the
 * package, e.g. `testdata/valid`). The tree is one buf module and the repo's
 * `proto/` another, so that fixtures import `shoal/v1/options.proto`.
 */
export function buildRequest(fixtureDir: string, parameter: string = snapshotParameter): CodeGeneratorRequest {
  const moduleDir = relative(repoRoot, join(packageDir, fixtureDir)).split(sep).join("/");
  const files = protoFilesOf(fixtureDir);
  const config = JSON.stringify({ version: "v2", modules: [{ path: "proto" }, { path: moduleDir }] });
  const image = execFileSync(
    bufBin,
    [
      "build",
      ".",
      "--config",
      config,
      "--as-file-descriptor-set",
      "-o",
      "-",
      ...files.flatMap((file) => ["--path", `${moduleDir}/${file}`]),
    ],
    { cwd: repoRoot, maxBuffer: 64 * 1024 * 1024 },
  );
  const set = fromBinary(FileDescriptorSetSchema, image);
  return create(CodeGeneratorRequestSchema, { fileToGenerate: files, parameter, protoFile: set.file });
}

/** Runs a plugin and returns its files by name. */
export function runPlugin(plugin: Plugin, request: CodeGeneratorRequest): Map<string, string> {
  const response: CodeGeneratorResponse = plugin.run(request);
  if (response.error) throw new Error(response.error);
  return new Map(response.file.map((file) => [file.name, file.content]));
}
