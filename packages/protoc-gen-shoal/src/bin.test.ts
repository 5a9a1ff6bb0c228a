// Runs bin/protoc-gen-shoal through buf, as the build does. It runs the built
// plugin (dist/): build it first with `npx tsc -b packages/protoc-gen-shoal`.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bufBin, buildRequest, packageDir, repoRoot, runPlugin } from "./fixtures.test-util.js";
import { protocGenShoal } from "./protoc-gen-shoal-plugin.js";

const bin = join(packageDir, "bin", "protoc-gen-shoal");
// buf.gen.yaml names protoc-gen-es by name: npm scripts put node_modules/.bin on PATH
const env = { ...process.env, PATH: `${join(repoRoot, "node_modules", ".bin")}${delimiter}${process.env.PATH ?? ""}` };

let out = "";

beforeAll(() => {
  if (!existsSync(join(packageDir, "dist", "index.js"))) {
    throw new Error("packages/protoc-gen-shoal/dist is missing: run `npx tsc -b packages/protoc-gen-shoal` first");
  }
  out = mkdtempSync(join(tmpdir(), "protoc-gen-shoal-bin-"));
});

afterAll(() => {
  if (out !== "") rmSync(out, { recursive: true, force: true });
});

describe("bin/protoc-gen-shoal", () => {
  it("prints its version", () => {
    expect(execFileSync(bin, ["--version"], { encoding: "utf8" })).toBe("protoc-gen-shoal v0.1.0\n");
  });

  it("generates examples/greeter with buf.gen.yaml, as the in-process plugin does", () => {
    execFileSync(bufBin, ["generate", "examples/greeter/proto", "--template", "buf.gen.yaml", "-o", out], {
      cwd: repoRoot,
      env,
      stdio: "pipe",
    });
    const dir = join(out, "src", "gen", "greeter", "v1");
    expect(existsSync(join(dir, "greeter_pb.ts"))).toBe(true);
    const expected = runPlugin(protocGenShoal, buildRequest("../../examples/greeter/proto", "target=ts,import_extension=js"));
    // A difference means dist/ is stale: rebuild it.
    expect(readFileSync(join(dir, "greeter_shoal.ts"), "utf8")).toBe(expected.get("greeter/v1/greeter_shoal.ts"));
  });

  it("fails through buf with the validation error on stderr", () => {
    const fixture = "packages/protoc-gen-shoal/testdata/errors/no-key";
    const config = { version: "v2", modules: [{ path: "proto" }, { path: fixture }] };
    const template = { version: "v2", plugins: [{ local: bin, out, opt: "target=ts" }] };
    const result = spawnSync(
      bufBin,
      ["generate", ".", "--config", JSON.stringify(config), "--path", `${fixture}/shop`, "--template", JSON.stringify(template)],
      { cwd: repoRoot, env, encoding: "utf8" },
    );
    expect(result.status).not.toBe(0);
    expect(result.stderr).toContain(
      "protoc-gen-shoal: shop/v1/cart.proto: service shop.v1.Cart, rpc AddItem: request shop.v1.AddItemRequest has no field marked (shoal.v1.key)",
    );
  });
});
