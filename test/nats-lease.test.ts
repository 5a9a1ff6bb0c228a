// Shard leases of cluster mode (DESIGN §9) on a real 3-node nats-server
// cluster (an R3 bucket), each node connected to its own server.
import { create } from "@bufbuild/protobuf";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { LogRecordSchema } from "@shoal/sdk/internal";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createShardLeases, type Lease, type LeaseHolder, type ShardLeases } from "../packages/runtime/src/cluster/shard-lease.js";
import { createShardWals } from "../packages/runtime/src/storage/nats/shard-wal.js";
import { FencedError, StorageError } from "../packages/runtime/src/storage/storage.js";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";

const input = (id: string) => create(LogRecordSchema, { kind: { case: "input", value: { envelope: { id } } } });

// Generous: each lease operation may wait out a leader election on a busy machine (a clean-clone run
// after the whole suite timed the first test out at 30 s twice).
describe("shard leases on a 3-node nats-server cluster (R3)", { timeout: 180_000 }, () => {
  let cluster: NatsCluster;
  const connections: NatsConnection[] = [];
  /** A node's view of the leases, through the server `server` (0, 1 or 2), with its own clock. */
  async function node(
    owner: string,
    server: number,
    clock: { now: number } = { now: 1_000_000 },
    beforeWrite?: (shard: number) => Promise<void>,
  ): Promise<ShardLeases> {
    const nc = await connect({ servers: cluster.servers[server]?.url });
    connections.push(nc);
    // Generous timeouts: the machine running the tests may be busy (a clean-clone run got no answer to the
    // bucket's creation within 30 s, right after the cluster started).
    const open = () => createShardLeases({ connection: nc, owner, ttlMs: 10_000, now: () => clock.now, beforeWrite, timeoutMs: 60_000 });
    // Once more when the bucket's lookup went unanswered: nats-server 2.9 can drop a JetStream API request
    // (a clean-clone run: "cannot create or open the lease bucket shoal-leases: timeout" after 60 s, with
    // the bucket made long before).
    return open().catch(open);
  }
  /**
   * Holds each shard's first two writers until both have read the lease, so
   * both decide on the same state and race to write; later writes pass.
   */
  function race(): (shard: number) => Promise<void> {
    const waiting = new Map<number, () => void>();
    const raced = new Set<number>();
    return (shard) => {
      if (raced.has(shard)) return Promise.resolve();
      const first = waiting.get(shard);
      if (first === undefined) return new Promise((resolve) => waiting.set(shard, resolve));
      raced.add(shard);
      first();
      return Promise.resolve();
    };
  }
  beforeAll(async () => {
    cluster = await startNatsCluster({ size: 3 });
    // The bucket made before the tests, asking again with short timeouts: right after a cluster starts, a
    // request to create a replicated stream can go unanswered (a clean-clone run waited 60 s for one answer).
    const nc = await connect({ servers: cluster.servers[0]?.url });
    try {
      const deadline = Date.now() + 150_000;
      for (;;) {
        try {
          await createShardLeases({ connection: nc, owner: "setup", timeoutMs: 5_000 });
          break;
        } catch (err) {
          if (Date.now() > deadline) throw err;
        }
      }
    } finally {
      await nc.close();
    }
  }, 180_000);
  afterAll(async () => {
    for (const nc of connections) await nc.close();
    await cluster?.close();
  });

  it("of two nodes taking the same free shards at once, exactly one wins each", async () => {
    const contend = race();
    const [a, b] = await Promise.all([node("node-a", 0, undefined, contend), node("node-b", 1, undefined, contend)]);
    const shards = Array.from({ length: 16 }, (_, i) => i);
    const results = await Promise.all(shards.map((s) => Promise.all([a.acquire(s), b.acquire(s)])));
    for (const [s, [la, lb]] of results.entries()) {
      expect(
        [la, lb].filter((l) => l !== undefined),
        `shard ${s}`,
      ).toHaveLength(1);
      const winner = la ?? lb;
      expect(await a.holder(s)).toEqual({ shard: s, owner: winner?.owner, epoch: 1n, expiresAtMs: winner?.expiresAtMs });
    }
  });

  it("keeps a renewed lease from others, and lets another node take it once it expired", async () => {
    const clockA = { now: 1_000_000 };
    const clockB = { now: 1_000_000 };
    const a = await node("node-a", 0, clockA);
    const b = await node("node-b", 2, clockB);
    const shard = 100;
    const first = (await a.acquire(shard)) as Lease;
    expect(first).toMatchObject({ owner: "node-a", epoch: 1n, expiresAtMs: 1_010_000 });

    clockA.now += 8_000;
    clockB.now += 8_000;
    const renewed = (await a.renew(first)) as Lease;
    expect(renewed).toMatchObject({ owner: "node-a", epoch: 1n, expiresAtMs: 1_018_000 });
    clockB.now += 8_000; // past the first expiry, not the renewed one
    expect(await b.acquire(shard)).toBeUndefined();

    clockB.now += 3_000; // past the renewed expiry
    const taken = (await b.acquire(shard)) as Lease;
    expect(taken).toMatchObject({ owner: "node-b", epoch: 2n, expiresAtMs: clockB.now + 10_000 });
    // The old holder learns it lost the lease on its next renewal.
    expect(await a.renew(renewed)).toBeUndefined();
    expect(await a.holder(shard)).toMatchObject({ owner: "node-b", epoch: 2n });
  });

  it("of two nodes taking the same expired leases at once, exactly one wins each", async () => {
    const late = { now: 5_000_000 };
    const old = await node("node-old", 0);
    const contend = race();
    const [b, c] = await Promise.all([node("node-b", 1, late, contend), node("node-c", 2, late, contend)]);
    const shards = Array.from({ length: 16 }, (_, i) => 200 + i);
    for (const s of shards) expect(await old.acquire(s)).toBeDefined();
    const results = await Promise.all(shards.map((s) => Promise.all([b.acquire(s), c.acquire(s)])));
    for (const [i, [lb, lc]] of results.entries()) {
      const winners = [lb, lc].filter((l) => l !== undefined);
      expect(winners, `shard ${shards[i]}`).toHaveLength(1);
      expect(winners[0]?.epoch).toBe(2n);
      expect(await old.holder(shards[i] as number)).toMatchObject({ owner: winners[0]?.owner, epoch: 2n });
    }
  });

  it("lets another node take a released lease at once, with the next epoch", async () => {
    const a = await node("node-a", 0);
    const b = await node("node-b", 1);
    const lease = (await a.acquire(300)) as Lease;
    expect(await b.acquire(300)).toBeUndefined();
    await a.release(lease);
    expect(await b.acquire(300)).toMatchObject({ owner: "node-b", epoch: 2n });
  });

  it("takes a lease held under its own name again with the next epoch (a restarted node)", async () => {
    const before = await node("node-a", 0);
    const first = (await before.acquire(301)) as Lease;
    const restarted = await node("node-a", 1);
    expect(await restarted.acquire(301)).toMatchObject({ owner: "node-a", epoch: 2n });
    // The earlier process has lost it.
    expect(await before.renew(first)).toBeUndefined();
  });

  it("renews many leases of two nodes at once although every write moves the bucket's last sequence", async () => {
    const a = await node("node-a", 0);
    const b = await node("node-b", 1);
    const leases = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).acquire(400 + i)));
    const renewed = await Promise.all(leases.map((l, i) => (i % 2 === 0 ? a : b).renew(l as Lease)));
    for (const [i, lease] of renewed.entries())
      expect(lease, `shard ${400 + i}`).toMatchObject({ epoch: 1n, owner: i % 2 === 0 ? "node-a" : "node-b" });
  });

  it("leaves a node that still believes in its expired lease harmless: the new holder's fence refuses its appends", async () => {
    const clockB = { now: 1_000_000 };
    const a = await node("node-a", 0);
    const b = await node("node-b", 1, clockB);
    const [toA, toB] = connections.slice(-2) as [NatsConnection, NatsConnection];
    const leaseA = (await a.acquire(600)) as Lease;
    const walsA = createShardWals({ connection: toA, ackTimeoutMs: 30_000 });
    const walA = await walsA.open(600, "node-a", leaseA.epoch);
    await walA.append([input("a-1")]).durable;

    clockB.now += 20_000; // node-a's lease expired by node-b's clock; node-a has not noticed
    const leaseB = (await b.acquire(600)) as Lease;
    expect(leaseB.epoch).toBe(2n);
    const walB = await createShardWals({ connection: toB, ackTimeoutMs: 30_000 }).open(600, "node-b", leaseB.epoch);
    expect(walB.epoch).toBe(2n);
    await expect(walA.append([input("a-2")]).durable).rejects.toThrow(FencedError);
    const inputs: string[] = [];
    for await (const entry of walsA.read(600)) {
      for (const r of entry.records) if (r.kind.case === "input") inputs.push(r.kind.value.envelope?.id ?? "");
    }
    expect(inputs).toEqual(["a-1"]);
  });

  it("keeps a lease across a SIGKILL of the bucket's stream leader", { timeout: 120_000 }, async () => {
    const a = await node("node-a", 0);
    const lease = (await a.acquire(700)) as Lease;
    const nc = connections[connections.length - 1] as NatsConnection;
    const jsm = await jetstreamManager(nc);
    const leader = (await jsm.streams.info("KV_shoal-leases")).cluster?.leader;
    expect(leader).toBeDefined();
    await cluster.server(leader as string).kill();
    try {
      // A node on another server asks until the bucket has a new leader (a request without one goes unanswered).
      const nc2 = await connect({ servers: cluster.servers.find((s) => s.running)?.url });
      connections.push(nc2);
      let other: ShardLeases | undefined;
      let holder: LeaseHolder | undefined;
      while (holder === undefined || other === undefined) {
        other ??= await createShardLeases({ connection: nc2, owner: "node-b", timeoutMs: 2_000, now: () => 1_000_000 }).catch(
          () => undefined,
        );
        holder = await other?.holder(700).catch(() => undefined);
        if (holder === undefined) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(holder).toEqual({ shard: 700, owner: "node-a", epoch: 1n, expiresAtMs: lease.expiresAtMs });
      expect(await other.acquire(700)).toBeUndefined();
    } finally {
      await cluster.server(leader as string).restart();
    }
  });

  it("reports a lease value another process wrote, naming the bucket, key and revision", async () => {
    const a = await node("node-a", 0);
    const nc = connections[connections.length - 1] as NatsConnection;
    const ack = await jetstream(nc).publish("$KV.shoal-leases.500", new TextEncoder().encode("not a lease"));
    const failure = await a.acquire(500).catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(StorageError);
    expect((failure as Error).message).toContain(
      `the lease of shard 500 in bucket shoal-leases (revision ${ack.seq}) is not a Shoal lease`,
    );
  });
});
