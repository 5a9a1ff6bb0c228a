// `shoal state list` pages through a node's instances: the admin service
// merges the shards' pages (each shard asked for `limit` keys after the last
// key shown), and `--all` follows the pages to the end. Run against `shoal dev`
// on a data directory, with the CLI in its own process.
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Child, repoRoot, shoalBin, startShoalDev } from "./support/processes.js";

const run = promisify(execFile);
const instances = 3_000;
let dir: string;
let node: { child: Child; url: string } | undefined;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-state-list-"));
  node = await startShoalDev(`${repoRoot}examples/greeter/dist/module.js`, [
    "--port",
    "0",
    "--data-dir",
    dir,
    "--shards",
    "16",
    "--log-level",
    "error",
  ]);
  const names = Array.from({ length: instances }, (_, i) => `user-${String((i * 7919) % 100_000).padStart(5, "0")}`);
  // 32 clients at a time.
  for (let i = 0; i < names.length; i += 32) {
    await Promise.all(
      names.slice(i, i + 32).map(async (name) => {
        const res = await fetch(`${node?.url}/greeter.v1.Greeter/Greet`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ name }),
        });
        if (!res.ok) throw new Error(`Greet ${name}: ${res.status} ${await res.text()}`);
      }),
    );
  }
}, 120_000);

afterAll(async () => {
  node?.child.process.kill("SIGKILL");
  await node?.child.exited;
  rmSync(dir, { recursive: true, force: true });
});

const shoal = (...args: string[]) => run(process.execPath, [shoalBin, ...args, "--url", node?.url ?? ""], { maxBuffer: 16 * 1024 * 1024 });

describe("shoal state list", () => {
  it("pages through thousands of instances with a small limit, each key once and in order", async () => {
    const { stdout, stderr } = await shoal("state", "list", "greeter.v1.Greeter", "--all", "--limit", "37");
    const keys = stdout.split("\n").filter((line) => line !== "");
    expect(stderr).toBe("");
    expect(keys.length).toBe(instances);
    expect(new Set(keys).size).toBe(instances);
    expect(keys).toEqual([...keys].sort());
  });

  it("shows one page and how to ask for the next", async () => {
    const first = await shoal("state", "list", "greeter.v1.Greeter", "--limit", "37");
    const keys = first.stdout.split("\n").filter((line) => line !== "");
    expect(keys.length).toBe(37);
    expect(first.stderr).toBe(`(more: shoal state list greeter.v1.Greeter --after "${keys.at(-1)}", or --all)\n`);
    const next = await shoal("state", "list", "greeter.v1.Greeter", "--limit", "37", "--after", keys.at(-1) ?? "");
    const following = next.stdout.split("\n").filter((line) => line !== "");
    expect(following.length).toBe(37);
    expect((following[0] ?? "") > (keys.at(-1) ?? "")).toBe(true);
    const last = await shoal("state", "list", "greeter.v1.Greeter", "--limit", "37", "--after", "user-99999");
    expect(last).toEqual({ stdout: "", stderr: "" });
  });
});
