// Faults at the edges, seen from a user's side: the runtime process refuses to
// start on a data directory it cannot use, says why, and a write that fails
// (a full disk) fails the requests in flight with Unavailable and loses
// nothing that was acknowledged.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { createGreeterClient } from "../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { type Child, freePort, repoRoot, shoalBin, start, startShoalDev } from "./support/processes.js";

const root = mkdtempSync(join(tmpdir(), "shoal-faults-"));
const children: Child[] = [];
afterAll(() => {
  for (const c of children) c.process.kill("SIGKILL");
  rmSync(root, { recursive: true, force: true });
});
const greeterModule = `${repoRoot}examples/greeter/dist/module.js`;

function shoalDevFails(args: string[]): { status: number | null; stderr: string } {
  const result = spawnSync(process.execPath, [shoalBin, "dev", greeterModule, "--port", "0", ...args], {
    encoding: "utf8",
    timeout: 20_000,
  });
  return { status: result.status, stderr: result.stderr };
}

describe("shoal dev refuses a data directory it cannot use", () => {
  it("under a regular file (unwritable)", () => {
    const file = join(root, "a-file");
    writeFileSync(file, "");
    const { status, stderr } = shoalDevFails(["--data-dir", join(file, "data")]);
    expect(status).toBe(1);
    expect(stderr).toMatch(/^shoal: StorageError: .*a-file\/data.*\(ENOTDIR\)/m);
  });
});

it("fails requests with Unavailable on a full disk and loses nothing acknowledged", async () => {
  const dir = join(root, "full");
  const port = await freePort();
  // A file size limit makes the store's writes fail as a full disk does, with
  // no root needed: the kernel answers EFBIG. (`ulimit -f` is in 1 KiB blocks in bash.)
  const limited = start("bash", [
    "-c",
    `ulimit -f 256 && exec "${process.execPath}" "${shoalBin}" dev "${greeterModule}" --port ${port} --data-dir "${dir}" --shards 4`,
  ]);
  children.push(limited);
  await limited.waitFor(/serving/);
  const greeter = createGreeterClient(createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }));
  const acknowledged: string[] = [];
  const failed: string[] = [];
  let failure: ConnectError | undefined;
  for (let i = 0; i < 20_000 && failed.length < 20; i++) {
    const name = `user-${i}-${"x".repeat(200)}`;
    try {
      await greeter.greet({ name });
      acknowledged.push(name);
    } catch (err) {
      failure ??= ConnectError.from(err);
      failed.push(name);
    }
  }
  expect(failure?.code).toBe(Code.Unavailable);
  expect(failure?.rawMessage).toMatch(/storage failed|is unavailable|not open/);
  expect(limited.stderr()).toMatch(/local storage .*: a write transaction failed/);
  limited.process.kill("SIGKILL");
  await limited.exited;

  // Without the limit, every acknowledged greeting is there once, and none of the failed ones.
  const node = await startShoalDev(greeterModule, ["--port", String(port), "--data-dir", dir, "--shards", "4", "--log-level", "error"]);
  children.push(node.child);
  for (const name of acknowledged) expect((await greeter.count({ name })).times, name).toBe(1);
  for (const name of failed) expect((await greeter.count({ name })).times, name).toBe(0);
  expect(acknowledged.length).toBeGreaterThan(100);
}, 120_000);
