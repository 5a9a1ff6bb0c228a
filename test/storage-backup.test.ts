// `shoal storage backup` copies a running node's store while it serves: a
// node started on the copy has the state of that moment. Run against
// `shoal dev` on a data directory, with the CLI in its own process.
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterEach, expect, it } from "vitest";
import { type Child, repoRoot, shoalBin, startShoalDev } from "./support/processes.js";

const run = promisify(execFile);
const greeterModule = `${repoRoot}examples/greeter/dist/module.js`;
let dir = "";
const nodes: Child[] = [];

afterEach(async () => {
  for (const node of nodes.splice(0)) {
    node.process.kill("SIGKILL");
    await node.exited;
  }
  rmSync(dir, { recursive: true, force: true });
});

async function startOn(dataDir: string) {
  const node = await startShoalDev(greeterModule, ["--port", "0", "--data-dir", dataDir, "--shards", "4", "--log-level", "error"]);
  nodes.push(node.child);
  return node;
}

async function greet(url: string, name: string) {
  const res = await fetch(`${url}/greeter.v1.Greeter/Greet`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  expect(res.status).toBe(200);
}

const shoal = async (url: string, ...args: string[]) => {
  try {
    const { stdout, stderr } = await run(process.execPath, [shoalBin, ...args, "--url", url]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
};

it("copies a running node's store; a node started on the copy has the state of that moment", async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-backup-"));
  const { url } = await startOn(join(dir, "data"));
  for (const name of ["ann", "bob", "cy"]) await greet(url, name);
  await greet(url, "ann");

  const copy = join(dir, "copy");
  const backup = await shoal(url, "storage", "backup", copy);
  expect(backup.code).toBe(0);
  expect(backup.stdout).toMatch(new RegExp(`^copied \\d+ bytes to ${copy}\\n$`));
  // After the copy: not in it.
  await greet(url, "dee");
  await greet(url, "ann");

  // Refused: a directory that is not empty, and none at all.
  const again = await shoal(url, "storage", "backup", copy);
  expect(again).toMatchObject({ code: 1 });
  expect(again.stderr).toContain(`failed_precondition: backup directory ${copy} is not empty`);
  const full = join(dir, "full");
  mkdirSync(full);
  writeFileSync(join(full, "x"), "x");
  expect((await shoal(url, "storage", "backup", full)).stderr).toContain("is not empty");

  const restored = await startOn(copy);
  expect((await shoal(restored.url, "state", "list", "greeter.v1.Greeter")).stdout).toBe("ann\nbob\ncy\n");
  expect((await shoal(restored.url, "state", "get", "greeter.v1.Greeter", "ann")).stdout).toBe('{"times":2}\n');
});

it("is refused on a node without a local store", async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-backup-"));
  const node = await startShoalDev(greeterModule, ["--port", "0", "--memory", "--log-level", "error"]);
  nodes.push(node.child);
  const res = await shoal(node.url, "storage", "backup", join(dir, "copy"));
  expect(res.code).toBe(1);
  expect(res.stderr).toContain("failed_precondition: this node's storage backend cannot be copied while it runs");
});
