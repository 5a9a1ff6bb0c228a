// Builds everything in dependency order:
// 1. Shoal's own protos -> packages/sdk/src/gen (protoc-gen-es only: buf runs a
//    template's plugins concurrently, so protoc-gen-shoal cannot use output of
//    the same run)
// 2. the SDK and the plugin (tsc -b)
// 3. every folder with a proto/ directory (examples, bench) -> <dir>/src/gen,
//    with protoc-gen-es and protoc-gen-shoal
// 4. everything else (tsc -b), then every user folder, listed or not
import { execFileSync } from "node:child_process";
import { readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { protoFolders, userBuildArgs } from "./projects.mjs";

const root = new URL("..", import.meta.url).pathname;
const bin = (name) => join(root, "node_modules", ".bin", name);
// buf finds protoc-gen-es on PATH, as it is under `npm run`.
const env = { ...process.env, PATH: `${join(root, "node_modules", ".bin")}:${process.env.PATH}` };
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: "inherit", env });

rmSync(join(root, "packages/sdk/src/gen"), { recursive: true, force: true });
run(bin("buf"), ["generate", "--template", "buf.gen.shoal.yaml", "--path", "proto/shoal"]);
run(bin("tsc"), ["-b", "packages/sdk", "packages/protoc-gen-shoal"]);

/**
 * `buf generate` for one folder's protos. The workspace is given inline so a
 * new folder under examples/ needs no edit of buf.yaml to build.
 */
function generateArgs(dir) {
  const config = { version: "v2", modules: [{ path: "proto" }, { path: join(dir, "proto") }] };
  // buf takes a module's folders, not the module root, as --path.
  const paths = readdirSync(join(root, dir, "proto")).flatMap((entry) => ["--path", join(dir, "proto", entry)]);
  return ["generate", ".", "--config", JSON.stringify(config), "--template", "buf.gen.yaml", ...paths, "-o", dir];
}

for (const dir of protoFolders(root)) {
  rmSync(join(root, dir, "src/gen"), { recursive: true, force: true });
  run(bin("buf"), generateArgs(dir));
}
run(bin("tsc"), ["-b", "tsconfig.json"]);
run(bin("tsc"), userBuildArgs(root));
