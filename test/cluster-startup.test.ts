// A node that starts while JetStream cannot answer (a meta leader election,
// a stream without quorum: what a node restarted during a nats-server restart
// meets) waits until it answers, instead of exiting. A CI storm's node exited
// with "cannot watch the lease bucket shoal-leases: timeout" because its
// start asked once. Here 2 of 3 nats-servers are down for longer than one
// JetStream request's timeout while the lease directory, a bucket watch and a
// whole shoal-node start. Runs the built bin (npm run build first).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { watchBucket } from "../packages/runtime/src/cluster/bucket-watch.js";
import { createLeaseDirectory } from "../packages/runtime/src/cluster/lease-directory.js";
import { createShardLeases } from "../packages/runtime/src/cluster/shard-lease.js";
import { writeClusterNodeConfig } from "./support/cluster-nodes.js";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";
import { type Child, freePort, repoRoot, start } from "./support/processes.js";

const shoalNode = join(repoRoot, "packages/runtime/bin/shoal-node.js");
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** Longer than a JetStream request's timeout (5 s): a start that asks once has failed by then. */
const outageMs = 8_000;

describe("a node started while JetStream has no quorum", { timeout: 240_000 }, () => {
  let nats: NatsCluster;
  let dir = "";
  const connections: NatsConnection[] = [];
  const children: Child[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "shoal-cluster-startup-"));
    nats = await startNatsCluster({ size: 3 });
  }, 120_000);
  afterAll(async () => {
    for (const child of children) child.process.kill("SIGKILL");
    for (const nc of connections) await nc.close().catch(() => {});
    await nats?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A connection to the first server only: the one that stays up. */
  async function toSurvivor(): Promise<NatsConnection> {
    const nc = await connect({ servers: nats.servers[0]?.url, maxReconnectAttempts: -1 });
    connections.push(nc);
    return nc;
  }

  /** Runs `during` with the 2nd and 3rd servers killed, then restarts them after `outageMs`. */
  async function withoutQuorum<T>(during: () => T): Promise<T> {
    const [, second, third] = nats.servers;
    await Promise.all([second?.kill(), third?.kill()]);
    const started = during();
    await sleep(outageMs);
    await Promise.all([second?.restart(), third?.restart()]);
    await nats.ready(60_000);
    return started;
  }

  it("opens the lease directory and watches a bucket once JetStream answers again, with the values kept", async () => {
    const nc = await toSurvivor();
    const bucket = "startup-leases";
    const leases = await createShardLeases({ connection: nc, owner: "node-x", ttlMs: 600_000, bucket, timeoutMs: 30_000 });
    expect(await leases.acquire(3)).toBeDefined();
    const kv = await new Kvm(jetstream(nc)).open(bucket);

    const seen = new Map<string, Uint8Array | undefined>();
    const { directory, watch } = await withoutQuorum(() => {
      const opening = {
        directory: createLeaseDirectory({ connection: nc, bucket }),
        watch: watchBucket(kv, (key, value) => seen.set(key, value)),
      };
      // Settled outcomes are checked below; an early rejection must not count as unhandled meanwhile.
      opening.directory.catch(() => {});
      opening.watch.catch(() => {});
      return opening;
    });

    const opened = await directory;
    await opened.ready;
    expect(opened.ownerOf(3)).toBe("node-x");
    opened.close();
    const watching = await watch;
    await watching.ready;
    expect([...seen.keys()]).toEqual(["3"]);
    watching.stop();
  });

  it("starts a shoal-node, which listens and serves once the servers are back", async () => {
    // The node's buckets and streams exist (made by an earlier start), as in a cluster restarting a node
    // after a SIGKILL (what the cluster storm does).
    const port = await freePort();
    const config = writeClusterNodeConfig(dir, { nodeId: "node-a", servers: nats.urls, port, shards: 4, leaseMs: 2_000 });
    const first = start(process.execPath, [shoalNode, "--config", config], { cwd: dir });
    children.push(first);
    await first.waitFor(/^shoal-node: listening at /m, 120_000);
    first.process.kill("SIGKILL");
    await first.exited;

    const node = await withoutQuorum(() => {
      const child = start(process.execPath, [shoalNode, "--config", config], { cwd: dir });
      children.push(child);
      return child;
    });
    await node.waitFor(/^shoal-node: listening at /m, 120_000);
    const url = `http://127.0.0.1:${port}`;
    // Retried while the node takes its shards' leases: Unavailable until then.
    let balance: unknown;
    for (const deadline = Date.now() + 60_000; Date.now() < deadline; await sleep(250)) {
      const res = await fetch(`${url}/bank.v1.Account/Deposit`, {
        method: "POST",
        headers: { "content-type": "application/json", "idempotency-key": "startup-deposit" },
        body: JSON.stringify({ account: "acct-1", amount: "5" }),
      });
      if (res.ok) {
        balance = await res.json();
        break;
      }
    }
    expect(balance).toEqual({ balance: "5" });
    expect(node.process.exitCode).toBe(null);
  });
});
