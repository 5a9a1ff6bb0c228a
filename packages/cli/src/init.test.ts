// Unit tests of `shoal init`; test/standalone-project.test.ts installs and runs what it writes.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { InitError, init, pinnedVersions, projectFiles, shoalPackages } from "./init.js";

const repo = new URL("../../../", import.meta.url);
const readJson = (path: string) => JSON.parse(readFileSync(new URL(path, repo), "utf8")) as Record<string, Record<string, string>>;
const work = mkdtempSync(join(tmpdir(), "shoal-init-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

it("pins the versions this repository builds and tests with", () => {
  const root = readJson("package.json");
  const runtime = readJson("packages/runtime/package.json");
  const used: Record<string, string | undefined> = {
    ...root.devDependencies,
    ...runtime.dependencies,
    ...runtime.devDependencies,
  };
  for (const [name, version] of Object.entries(pinnedVersions)) expect(`${name}@${used[name]}`).toBe(`${name}@${version}`);
  const pkg = JSON.parse(projectFiles("x")["package.json"] as string);
  const cli = readJson("packages/cli/package.json") as unknown as { version: string };
  for (const name of shoalPackages) {
    expect(readJson(`packages/${name.slice("@shoal/".length)}/package.json`).name).toBe(name);
    expect(pkg.dependencies[name] ?? pkg.devDependencies[name]).toBe(cli.version);
  }
});

it("names the project after its folder and refuses a folder that holds anything", () => {
  const dir = join(work, "My App");
  expect(init(dir)).toContain("proto/hello/v1/counter.proto");
  expect(JSON.parse(readFileSync(join(dir, "package.json"), "utf8")).name).toBe("my-app");
  expect(() => init(dir)).toThrow(new InitError(`${dir} is not empty; give init a new or empty folder`));
});

it("depends on packed tarballs with --from, and names a missing one", () => {
  expect(() => init(join(work, "a"), { from: join(work, "no-packs") })).toThrow(/--from .* has no shoal-sdk-0\.1\.0\.tgz; run npm pack/);
  const from = join(work, "packs-here");
  mkdirSync(from);
  for (const name of shoalPackages) writeFileSync(join(from, `${name.slice(1).replace("/", "-")}-0.1.0.tgz`), "");
  const pkg = JSON.parse(projectFiles("x", { from })["package.json"] as string);
  expect(pkg.dependencies["@shoal/sdk"]).toBe(`file:${join(from, "shoal-sdk-0.1.0.tgz")}`);
  expect(pkg.overrides["@shoal/runtime"]).toBe("$@shoal/runtime");
});
