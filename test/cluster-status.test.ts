// `shoal status` across 3 real nodes (issue 10, operations): 3 `shoal-node`
// processes on one nats-server share the shards through leases; asked at any
// one of them, the status lists all three with the shards each holds, the
// lease epochs (the same in the membership record and in `shoal-leases`) and
// each shard's lag, asked of its owner. Runs the built bins (npm run build first).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeClusterNodeConfig } from "./support/cluster-nodes.js";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";
import { shoal } from "./support/nats-node.js";
import { type Child, freePort, repoRoot, start } from "./support/processes.js";

const shoalNode = join(repoRoot, "packages/runtime/bin/shoal-node.js");
const shards = 6;
const names = ["node-a", "node-b", "node-c"] as const;
let dir = "";
let nats: NatsCluster;
const children: Child[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-cluster-status-"));
  nats = await startNatsCluster({ size: 1 });
}, 60_000);
afterAll(async () => {
  for (const child of children) if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill("SIGKILL");
  await nats?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function startNode(name: string): Promise<string> {
  const port = await freePort();
  const path = writeClusterNodeConfig(dir, {
    nodeId: name,
    servers: nats.urls,
    port: port,
    shards,
    leaseMs: 3000,
    replicas: 1,
    logLevel: "warn",
  });
  const child = start(process.execPath, [shoalNode, "--config", path], { cwd: dir });
  children.push(child);
  const [, url] = await child.waitFor(/^shoal-node: listening at (http:\/\/127\.0\.0\.1:\d+)\n/m, 60_000);
  return url as string;
}

interface ClusterJson {
  unownedShards?: number[];
  nodes: Array<{
    node: string;
    ingress?: string;
    unreachable?: string;
    shards?: Array<{ shard?: number; epoch?: string; leaseOwner?: string; leaseEpoch?: string; walSequence?: string; lag?: string }>;
  }>;
}

describe("shoal status across the nodes of a cluster", () => {
  it("lists 3 real nodes, the shards each holds with their lease epochs, and each shard's lag", { timeout: 180_000 }, async () => {
    const urls = await Promise.all(names.map((name) => startNode(name)));
    // Until each of the three holds its fair share (6 / 3), each shard with its lease, and each answers for its lag.
    // Every shard held is not enough: nodes that started before the others saw them hold more than their share
    // and give the extra shards up in a later round, and requests for a shard on its way are answered Unavailable.
    let cluster: ClusterJson | undefined;
    for (let attempt = 1; ; attempt++) {
      cluster = (JSON.parse(await shoal(["status", "--url", urls[0] as string, "--json"])) as { cluster?: ClusterJson }).cluster;
      const held = (cluster?.nodes ?? []).flatMap((n) => (n.shards ?? []).map((s) => s.shard ?? 0)).sort((a, b) => a - b);
      const settled =
        cluster?.nodes.length === 3 &&
        held.join() === Array.from({ length: shards }, (_, s) => s).join() &&
        cluster.nodes.every(
          (n) =>
            n.unreachable === undefined &&
            n.shards?.length === shards / names.length &&
            n.shards.every((s) => s.leaseOwner === n.node && s.lag === "0"),
        );
      if (settled) break;
      if (attempt === 600) throw new Error(`the cluster never settled: ${JSON.stringify(cluster)}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    // Writes through every ingress, to accounts on every node.
    for (let i = 0; i < 12; i++) {
      const res = await fetch(`${urls[i % 3]}/bank.v1.Account/Deposit`, {
        method: "POST",
        headers: { "content-type": "application/json", "idempotency-key": `status-${i}` },
        body: JSON.stringify({ account: `acct-${i}`, amount: "1", transferId: `t-${i}` }),
      });
      expect(res.status).toBe(200);
    }
    const after = (JSON.parse(await shoal(["status", "--url", urls[1] as string, "--json"])) as { cluster?: ClusterJson }).cluster;
    expect(after?.nodes.map((n) => n.node)).toEqual([...names]);
    expect(after?.unownedShards).toBeUndefined();
    for (const [i, node] of (after?.nodes ?? []).entries()) {
      expect(node.ingress).toBe(urls[i]);
      expect(node.unreachable).toBeUndefined();
      expect(node.shards?.length).toBeGreaterThan(0);
      for (const shard of node.shards ?? []) {
        // The epoch the node lists is its lease's; the WAL moved past the fence with the deposits, and the owner applied all of it.
        expect(shard).toMatchObject({ leaseOwner: node.node, leaseEpoch: shard.epoch, lag: "0" });
        expect(BigInt(shard.walSequence ?? "0")).toBeGreaterThan(0n);
      }
    }
    const text = await shoal(["status", "--url", urls[2] as string]);
    expect(text).toContain(`cluster: 3 live nodes; shards no node owns: none`);
    for (const [i, name] of names.entries()) expect(text).toMatch(new RegExp(`^node ${name} at ${urls[i]}: \\d+ shards?, heartbeat`, "m"));
  });
});
