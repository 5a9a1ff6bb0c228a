// `shoal status` across nodes (issue 10, operations) on a real nats-server: a
// `shoal-node` on the nats backend lists the live nodes of the membership
// bucket `shoal-nodes`, their shards with the lease epochs of `shoal-leases`,
// each shard's lag (its WAL stream's last sequence minus the sequence the
// owner applied, asked of the owner) and the inputs waiting in `shoal-inputs`.
// The other nodes' records are written here in the contract's JSON shape, as
// nodes write them; the inputs are sends through the node's ingress, which
// publishes them with the real inputs module. Runs the built bins (npm run
// build first).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { shardOf } from "../packages/runtime/src/protocol/shard-hash.js";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";
import { shoal, startBankNodeOnNats } from "./support/nats-node.js";
import { type Child, freePort } from "./support/processes.js";

let dir = "";
let nats: NatsCluster;
let nc: NatsConnection | undefined;
let node: Child | undefined;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-nats-status-"));
  nats = await startNatsCluster({ size: 1 });
}, 60_000);
afterAll(async () => {
  if (node !== undefined && node.process.exitCode === null && node.process.signalCode === null) node.process.kill("SIGKILL");
  await nc?.close();
  await nats?.close();
  rmSync(dir, { recursive: true, force: true });
});

interface StatusJson {
  node: string;
  nats?: { state: string; server: string; reconnects?: number };
  cluster?: {
    membership?: boolean;
    unownedShards?: number[];
    nodes: Array<{
      node: string;
      ingress?: string;
      unreachable?: string;
      shards?: Array<{
        shard?: number;
        epoch?: string;
        leaseOwner?: string;
        leaseEpoch?: string;
        walSequence?: string;
        appliedSequence?: string;
        lag?: string;
        pendingInputs?: string;
      }>;
    }>;
  };
}

describe("shoal status on the nats backend", () => {
  it("lists every live node with its shards, their lease epochs and lag, as text and as --json", { timeout: 120_000 }, async () => {
    // Leases far longer than the test: the node keeps its shards whatever the records written here say.
    const started = await startBankNodeOnNats({
      dir,
      servers: nats.urls,
      port: await freePort(),
      extra: ["cluster: { nodeId: solo, leaseMs: 120000 }"],
    });
    node = started.child;
    const url = started.url;
    for (const account of ["alice", "bob", "carol", "dave"]) {
      const res = await fetch(`${url}/bank.v1.Account/Deposit`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ account, amount: "5", transferId: `t-${account}` }),
      });
      expect(res.status).toBe(200);
    }
    // One node: it holds every shard, under the lease epoch its membership record names, and has applied its whole WAL.
    const alone = JSON.parse(await shoal(["status", "--url", url, "--json"])) as StatusJson;
    expect(alone.node).toBe("solo");
    expect(alone.cluster?.membership).toBe(true);
    expect(alone.cluster?.nodes.map((n) => n.node)).toEqual(["solo"]);
    expect(alone.cluster?.unownedShards).toBeUndefined();
    const own = alone.cluster?.nodes[0]?.shards ?? [];
    expect(own.map((s) => s.shard ?? 0)).toEqual([0, 1, 2, 3]);
    for (const shard of own) {
      expect(shard).toMatchObject({ leaseOwner: "solo", leaseEpoch: shard.epoch, lag: "0" });
      expect(shard.appliedSequence).toBe(shard.walSequence);
    }

    // Records of other nodes as they write them (one key per node): one that does not answer, one whose record expired.
    nc = await nats.connect();
    const js = jetstream(nc);
    const now = Date.now();
    const members = await new Kvm(js).open("shoal-nodes");
    const record = (node: string, ingress: string, expiresAtMs: number, shards: number[]) =>
      JSON.stringify({ node, ingress, heartbeatAtMs: now, expiresAtMs, shards: shards.map((shard) => ({ shard, epoch: "9" })) });
    const nowhere = `http://127.0.0.1:${await freePort()}`;
    await members.put("n-other", record("n-other", nowhere, now + 60_000, [2]));
    await members.put("n-gone", record("n-gone", nowhere, now - 1_000, [3]));
    // A second live member: solo gives half of the shards up for it (its fair share); they stay no one's, as n-other is not real.
    let settled: StatusJson["cluster"];
    for (let attempt = 1; ; attempt++) {
      settled = (JSON.parse(await shoal(["status", "--url", url, "--json"])) as StatusJson).cluster;
      if (settled?.nodes.find((n) => n.node === "solo")?.shards?.length === 2) break;
      if (attempt === 300) throw new Error(`solo never gave half of its shards up: ${JSON.stringify(settled)}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const kept = (settled?.nodes.find((n) => n.node === "solo")?.shards ?? []).map((s) => s.shard ?? 0);
    const [, laggingShard] = kept as [number, number];
    // Inputs waiting in the inputs stream for n-other's shard (no one consumes them: n-other is not real), sent through
    // solo's ingress: every one-way message goes through the stream, whichever node owns its shard.
    expect(kept).not.toContain(2);
    const waiting = Array.from({ length: 1_000 }, (_, i) => `acct-${i}`)
      .filter((k) => shardOf("bank.v1.Account", k, 4) === 2)
      .slice(0, 2);
    for (const account of waiting) {
      const res = await fetch(`${url}/bank.v1.Account/Deposit`, {
        method: "POST",
        headers: { "content-type": "application/json", "shoal-send": "1" },
        body: JSON.stringify({ account, amount: "1", transferId: `waiting-${account}` }),
      });
      expect(res.status).toBe(200);
    }
    const jsm = await jetstreamManager(nc);
    // A message the owner of one of solo's shards has not applied (nor could: it is not its own): that shard lags by one.
    const wal = await jsm.streams.info(`shoal-wal-${laggingShard}`);
    await js.publish(`shoal.wal.${laggingShard}`, "not applied");

    const status = JSON.parse(await shoal(["status", "--url", url, "--json"])) as StatusJson;
    expect(status.nats).toMatchObject({ state: "connected", server: new URL(nats.urls[0] as string).host });
    const cluster = status.cluster;
    // n-gone's record expired: it is not live. Shard 2 is n-other's as its record says; solo's other released shard is no one's.
    expect(cluster?.nodes.map((n) => n.node)).toEqual(["n-other", "solo"]);
    expect(cluster?.unownedShards).toEqual([0, 1, 2, 3].filter((s) => s !== 2 && !kept.includes(s)));
    const mine = cluster?.nodes.find((n) => n.node === "solo");
    expect(mine?.ingress).toBe(url);
    expect(mine?.unreachable).toBeUndefined();
    const epochOf = (shard: number) => mine?.shards?.find((s) => (s.shard ?? 0) === shard)?.epoch;
    expect(mine?.shards?.find((s) => (s.shard ?? 0) === laggingShard)).toMatchObject({
      leaseOwner: "solo",
      leaseEpoch: epochOf(laggingShard),
      walSequence: String(wal.state.last_seq + 1),
      appliedSequence: String(wal.state.last_seq),
      lag: "1",
      pendingInputs: "0",
    });
    // A node that does not answer is listed with why; its shard's lag is unknown.
    const other = cluster?.nodes.find((n) => n.node === "n-other");
    expect(other?.unreachable).toContain(nowhere);
    expect(other?.shards).toEqual([expect.objectContaining({ shard: 2, epoch: "9", pendingInputs: "2" })]);
    expect(other?.shards?.[0]?.lag).toBeUndefined();

    const text = await shoal(["status", "--url", url]);
    expect(text).toContain(`nats: connected to ${new URL(nats.urls[0] as string).host}, 0 reconnects`);
    expect(text).toContain(`cluster: 2 live nodes; shards no node owns: ${cluster?.unownedShards?.join(", ")}`);
    expect(text).toMatch(
      new RegExp(`^node n-other at ${nowhere}: 1 shard, heartbeat [\\d.]+ s ago; did not answer \\(lag unknown\\)`, "m"),
    );
    // Its lease is solo's, released when solo gave the shard up: free.
    expect(text).toMatch(/^ {4}2 n-other +9 +free \(solo@\d+\) +\d+ +- +- +2$/m);
    const e = epochOf(laggingShard);
    expect(text).toMatch(
      new RegExp(`^ {4}${laggingShard} solo +${e} +solo@${e} +${wal.state.last_seq + 1} +${wal.state.last_seq} +1 +0$`, "m"),
    );
  });
});
