// A node on the `nats` backend (cluster preview, issue 10): `shoal-node` with
// `storage: { backend: nats }` against a real nats-server serves the bank;
// after a SIGKILL it starts again on an EMPTY local directory and the state
// comes back from JetStream. Runs the built bin (npm run build first).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";
import { type Child, freePort, repoRoot, start } from "./support/processes.js";

const shoalNode = join(repoRoot, "packages/runtime/bin/shoal-node.js");
const bankModule = join(repoRoot, "examples/bank/dist/module.js");
let dir = "";
let nats: NatsCluster;
const children: Child[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-nats-node-"));
  nats = await startNatsCluster({ size: 1 });
}, 60_000);
afterEach(() => {
  for (const child of children.splice(0))
    if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill("SIGKILL");
});
afterAll(async () => {
  await nats?.close();
  rmSync(dir, { recursive: true, force: true });
});

function shoalNodeWith(name: string, storage: string, port: number): Child {
  const path = join(dir, `${name}.yaml`);
  writeFileSync(
    path,
    `shards: 4\nstorage: ${storage}\ningress: { port: ${port} }\nfunctions: { module: ${bankModule} }\nlog: { level: warn }\n`,
  );
  const child = start(process.execPath, [shoalNode, "--config", path], { cwd: dir });
  children.push(child);
  return child;
}

async function call(url: string, method: string, body: unknown, idempotencyKey?: string): Promise<unknown> {
  const res = await fetch(`${url}/bank.v1.Account/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(idempotencyKey === undefined ? {} : { "idempotency-key": idempotencyKey }) },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method}: HTTP ${res.status} ${JSON.stringify(json)}`);
  return json;
}

describe("a node on the nats backend", () => {
  it("restores the bank's state from JetStream after a SIGKILL, on an empty local directory", { timeout: 120_000 }, async () => {
    const port = await freePort();
    const servers = JSON.stringify(nats.urls);
    const first = shoalNodeWith("first", `{ backend: nats, servers: ${servers}, directory: first-store, replicas: 1 }`, port);
    const [, url] = await first.waitFor(/^shoal-node: listening at (http:\/\/127\.0\.0\.1:\d+)\n/m, 60_000);
    expect(await call(url as string, "Deposit", { account: "alice", amount: "70", transferId: "t1" }, "deposit-t1")).toEqual({
      balance: "70",
    });
    first.process.kill("SIGKILL");
    await first.exited;

    // Another directory: nothing local survives, so the balance can only come from the WAL on JetStream.
    const second = shoalNodeWith("second", `{ backend: nats, servers: ${servers}, directory: second-store, replicas: 1 }`, port);
    const [, again] = await second.waitFor(/^shoal-node: listening at (http:\/\/127\.0\.0\.1:\d+)\n/m, 60_000);
    expect(await call(again as string, "Get", { account: "alice" })).toEqual({
      balance: "70",
      ledger: [{ transferId: "t1", amount: "70" }],
    });
    // The deposit's idempotency-key reply came back too: a retry gets it instead of a second run.
    expect(await call(again as string, "Deposit", { account: "alice", amount: "70", transferId: "t1" }, "deposit-t1")).toEqual({
      balance: "70",
    });
    expect(await call(again as string, "Deposit", { account: "alice", amount: "5", transferId: "t2" }, "deposit-t2")).toEqual({
      balance: "75",
    });
    second.process.kill("SIGTERM");
    expect(await second.exited).toBe(0);
  });

  it("keeps two applications with their own storage.prefix apart on one NATS", { timeout: 120_000 }, async () => {
    const servers = JSON.stringify(nats.urls);
    // Same host, so the same default nodeId: only the prefix tells the two applications apart.
    const urls: Record<string, string> = {};
    const nodes: Child[] = [];
    for (const prefix of ["orders", "payments"]) {
      const node = shoalNodeWith(
        prefix,
        `{ backend: nats, servers: ${servers}, directory: ${prefix}-store, replicas: 1, prefix: ${prefix} }`,
        0,
      );
      nodes.push(node);
      const [, url] = await node.waitFor(/^shoal-node: listening at (http:\/\/127\.0\.0\.1:\d+)\n/m, 60_000);
      urls[prefix] = url as string;
    }
    await call(urls.orders as string, "Deposit", { account: "alice", amount: "70", transferId: "t1" }, "orders-t1");
    await call(urls.payments as string, "Deposit", { account: "alice", amount: "5", transferId: "t1" }, "payments-t1");
    expect(await call(urls.orders as string, "Get", { account: "alice" })).toEqual({
      balance: "70",
      ledger: [{ transferId: "t1", amount: "70" }],
    });
    expect(await call(urls.payments as string, "Get", { account: "alice" })).toEqual({
      balance: "5",
      ledger: [{ transferId: "t1", amount: "5" }],
    });

    const nc = await nats.connect();
    try {
      const names: string[] = [];
      for await (const name of (await jetstreamManager(nc)).streams.names()) names.push(name);
      for (const prefix of ["orders", "payments"]) {
        expect(names).toContain(`KV_${prefix}-leases`);
        expect(names).toContain(`KV_${prefix}-nodes`);
        expect(names).toContain(`${prefix}-inputs`);
        expect(names.filter((name) => name.startsWith(`${prefix}-wal-`)).length).toBeGreaterThan(0);
      }
    } finally {
      await nc.close();
    }
    for (const node of nodes) {
      node.process.kill("SIGTERM");
      expect(await node.exited).toBe(0);
    }
  });

  it("exits 1 naming the servers when NATS cannot be reached", { timeout: 60_000 }, async () => {
    const nowhere = `nats://127.0.0.1:${await freePort()}`;
    const node = shoalNodeWith("unreachable", `{ backend: nats, servers: ["${nowhere}"], directory: unreachable-store }`, 0);
    expect(await node.exited).toBe(1);
    expect(node.stderr()).toContain(`storage: cannot open the nats backend on ${nowhere}`);
    expect(node.stderr()).toContain("check storage.servers");
  });
});
