// One-way sends in cluster mode (issue 10; storage/nats/shard-inputs.ts): a
// send (`Shoal-Send: 1`) to a shard whose owner was SIGKILLed is accepted by
// another node's ingress at once, through the inputs stream, and applied once
// after that node takes the shard over. 2 `shoal-node` processes on one
// nats-server; runs the built bin (npm run build first).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { shardOf } from "../packages/runtime/src/protocol/shard-hash.js";
import { writeClusterNodeConfig } from "./support/cluster-nodes.js";
import { until } from "./support/inputs.js";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";
import { type Child, freePort, repoRoot, start } from "./support/processes.js";

const shoalNode = join(repoRoot, "packages/runtime/bin/shoal-node.js");
const shards = 4;

let dir = "";
let nats: NatsCluster;
const children: Child[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-cluster-inputs-"));
  nats = await startNatsCluster({ size: 1 });
}, 60_000);
afterAll(async () => {
  for (const child of children) if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill("SIGKILL");
  await Promise.all(children.map((c) => c.exited));
  await nats?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function startNode(name: string): Promise<{ child: Child; url: string }> {
  const path = writeClusterNodeConfig(dir, {
    nodeId: name,
    servers: nats.urls,
    port: await freePort(),
    shards,
    leaseMs: 2000,
    logLevel: "info",
  });
  const child = start(process.execPath, [shoalNode, "--config", path], { cwd: dir });
  children.push(child);
  const [, url] = await child.waitFor(/^shoal-node: listening at (http:\/\/127\.0\.0\.1:\d+)\n/m, 60_000);
  return { child, url: url as string };
}

/** The shards a node said last that it owns (its log, on stderr). */
function owned(child: Child): number[] {
  const said = [...child.stderr().matchAll(/owns shards \[([\d, ]*)\]/g)].at(-1)?.[1] ?? "";
  return said === "" ? [] : said.split(",").map((s) => Number(s.trim()));
}

async function post(url: string, method: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}/bank.v1.Account/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

describe("one-way sends in a cluster", () => {
  it("accepts a send to a shard whose owner was SIGKILLed, and applies it once after the takeover", { timeout: 180_000 }, async () => {
    const a = await startNode("node-a");
    const b = await startNode("node-b");
    await until("each node owns half the shards", () => owned(a.child).length === shards / 2 && owned(b.child).length === shards / 2);
    const ofB = owned(b.child);
    const account = Array.from({ length: 1_000 }, (_, i) => `acct-${i}`).find((k) => ofB.includes(shardOf("bank.v1.Account", k, shards)));
    if (account === undefined) throw new Error(`no account among 1000 on node-b's shards ${ofB}`);
    // Applied by its owner while it lives.
    expect((await post(a.url, "Deposit", { account, amount: "10", transferId: "before" }, { "shoal-send": "1" })).status).toBe(200);
    await until("node-b applied it", async () => ((await post(a.url, "Get", { account })).json.balance ?? "0") === "10");

    b.child.process.kill("SIGKILL");
    await b.child.exited;
    // Its lease has not expired: node-a does not own the shard, and the owner is dead.
    const sends = ["after-1", "after-2", "after-3"];
    for (const transferId of sends) {
      const sent = await post(a.url, "Deposit", { account, amount: "1", transferId }, { "shoal-send": "1" });
      expect(sent, `send ${transferId} while the owner is dead`).toMatchObject({ status: 200 });
    }
    await until("node-a took every shard", () => owned(a.child).length === shards);
    // The node says it owns a shard before the shard is open (recovering from its log): until then reads get Unavailable.
    const ledger = async () => {
      const read = await post(a.url, "Get", { account });
      return read.status === 200 ? (read.json.ledger as Array<{ transferId: string }>).map((e) => e.transferId) : [];
    };
    await until("the sends are applied", async () => (await ledger()).length >= 1 + sends.length);
    expect(await ledger()).toEqual(["before", ...sends]);
    expect((await post(a.url, "Get", { account })).json.balance).toBe("13");
  });
});
