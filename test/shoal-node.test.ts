// `shoal-node`, @shoal/runtime's own entry point for a container: it serves a
// node as shoal.yaml configures it without @shoal/cli's tooling installed.
// Runs the built bin (npm run build first).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type Child, repoRoot, start } from "./support/processes.js";

const shoalNode = join(repoRoot, "packages/runtime/bin/shoal-node.js");
let dir = "";
const children: Child[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "shoal-node-"));
});
afterEach(() => {
  for (const child of children.splice(0))
    if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill("SIGKILL");
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function shoalNodeWith(yaml: string, args: string[] = []): Child {
  const path = join(dir, "shoal.yaml");
  writeFileSync(path, yaml);
  const child = start(process.execPath, [shoalNode, ...args], { cwd: dir });
  children.push(child);
  return child;
}

describe("shoal-node", () => {
  it("serves a built module as shoal.yaml configures it and exits 0 on SIGTERM", async () => {
    const module = join(repoRoot, "examples/greeter/dist/module.js");
    const node = shoalNodeWith(
      `storage: { backend: memory }\ningress: { port: 0 }\nfunctions: { module: ${module} }\nlog: { level: warn }\n`,
    );
    const [, url] = await node.waitFor(/^shoal-node: listening at (http:\/\/127\.0\.0\.1:\d+)\n/m);
    const res = await fetch(`${url}/greeter.v1.Greeter/Greet`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "joe" }),
    });
    expect(await res.json()).toEqual({ greeting: "Hello, joe!", times: 1 });
    node.process.kill("SIGTERM");
    expect(await node.exited).toBe(0);
    expect(node.stderr()).toBe("");
  });

  it("closes and exits 0 on a SIGTERM that comes while it starts, and on one the moment it says it listens", async () => {
    // A module that takes a second to load: the signal lands inside the start.
    const slow = join(dir, "slow-module.mjs");
    const greeter = join(repoRoot, "examples/greeter/dist/module.js");
    writeFileSync(
      slow,
      `process.stdout.write("module: loading\\n");\nawait new Promise((r) => setTimeout(r, 1000));\nexport { default } from ${JSON.stringify(greeter)};\n`,
    );
    const config = (module: string) =>
      `storage: { backend: memory }\ningress: { port: 0 }\nfunctions: { module: ${module} }\nlog: { level: warn }\n`;
    const loading = shoalNodeWith(config(slow));
    await loading.waitFor(/^module: loading\n/m);
    loading.process.kill("SIGTERM");
    expect(await loading.exited).toBe(0);
    expect(loading.stderr()).toBe("");
    // As a supervisor does that stops a node as soon as it is up: no window between the banner and the handlers.
    for (let i = 0; i < 5; i++) {
      const node = shoalNodeWith(config(greeter));
      await node.waitFor(/^shoal-node: listening at /m);
      node.process.kill("SIGTERM");
      expect(await node.exited).toBe(0);
    }
  });

  it("refuses a TypeScript module, pointing at the build or at @shoal/cli", async () => {
    const module = join(repoRoot, "examples/greeter/src/module.ts");
    const node = shoalNodeWith(`storage: { backend: memory }\nfunctions: { module: ${module} }\n`, ["--config", "shoal.yaml"]);
    expect(await node.exited).toBe(1);
    expect(node.stderr()).toContain(`shoal-node: Error: ${module}: a TypeScript module needs a build step here`);
    expect(node.stderr()).toContain("`shoal dev` or `shoal serve` from @shoal/cli");
  });

  it("exits 1 naming the key of an invalid config, and on an unknown flag", async () => {
    const node = shoalNodeWith("ingress: { prot: 80 }\n");
    expect(await node.exited).toBe(1);
    expect(node.stderr()).toMatch(/^shoal-node: shoal\.yaml: ingress\.prot: unknown key/);

    const flag = shoalNodeWith("", ["--conifg", "x.yaml"]);
    expect(await flag.exited).toBe(1);
    expect(flag.stderr()).toMatch(/^shoal-node: Unknown option '--conifg'/);
  });
});
