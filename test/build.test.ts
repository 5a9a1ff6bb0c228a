// `npm run build` type-checks every folder under examples/ (and bench), not
// only those the root tsconfig.json lists.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, expect, it } from "vitest";
import { userBuildArgs } from "../scripts/projects.mjs";

const repoRoot = fileURLToPath(new URL("../", import.meta.url));
const tsc = join(repoRoot, "node_modules/.bin/tsc");
const dir = mkdtempSync(join(tmpdir(), "shoal-build-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(path: string, text: string) {
  mkdirSync(join(dir, path, ".."), { recursive: true });
  writeFileSync(join(dir, path), text);
}

it("type-checks an example folder the root tsconfig.json does not list", () => {
  const project = JSON.stringify({ compilerOptions: { strict: true, rootDir: "src", outDir: "dist" }, include: ["src"] });
  write("tsconfig.json", JSON.stringify({ files: [], references: [{ path: "examples/listed" }] }));
  write("examples/listed/tsconfig.json", project);
  write("examples/listed/src/index.ts", "export const n: number = 1;\n");
  write("examples/new-one/tsconfig.json", project);
  write("examples/new-one/src/index.ts", 'export const n: number = "one";\n');
  write("examples/README.md", "not a folder\n");
  let output = "";
  try {
    execFileSync(tsc, ["-b", "tsconfig.json"], { cwd: dir, encoding: "utf8" });
    execFileSync(tsc, userBuildArgs(dir), { cwd: dir, encoding: "utf8" });
  } catch (err) {
    output = String((err as { stdout?: string }).stdout);
  }
  expect(output).toContain("examples/new-one/src/index.ts");
  expect(output).toContain("Type 'string' is not assignable to type 'number'");
});

it("covers every example folder of this repository and bench", () => {
  const withTsconfig = readdirSync(join(repoRoot, "examples"))
    .map((d) => join("examples", d))
    .filter((d) => existsSync(join(repoRoot, d, "tsconfig.json")));
  expect(withTsconfig.length).toBeGreaterThan(0);
  expect(userBuildArgs(repoRoot)).toEqual(["-b", ...withTsconfig, "bench"]);
});
