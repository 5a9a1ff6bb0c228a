// Builds everything in dependency order:
// 1. Shoal's own protos -> packages/sdk/src/gen (protoc-gen-es only: buf runs a
//    template's plugins concurrently, so protoc-gen-shoal cannot use output of
//    the same run)
// 2. the SDK and the plugin (tsc -b)
// 3. every folder with a proto/ directory (examples, bench) -> <dir>/src/gen,
//    with protoc-gen-es and protoc-gen-shoal
// 4. everything else (tsc -b)
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const bin = (name) => join(root, "node_modules", ".bin", name);
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: "inherit" });

rmSync(join(root, "packages/sdk/src/gen"), { recursive: true, force: true });
run(bin("buf"), ["generate", "--template", "buf.gen.shoal.yaml", "--path", "proto/shoal"]);
run(bin("tsc"), ["-b", "packages/sdk", "packages/protoc-gen-shoal"]);

const userDirs = [
  ...readdirSync(join(root, "examples")).map((d) => join("examples", d)),
  "bench",
].filter((d) => existsSync(join(root, d, "proto")));
for (const dir of userDirs) {
  rmSync(join(root, dir, "src/gen"), { recursive: true, force: true });
  run(bin("buf"), ["generate", join(dir, "proto"), "--template", "buf.gen.yaml", "-o", dir]);
}
run(bin("tsc"), ["-b", "tsconfig.json"]);
