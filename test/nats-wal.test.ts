// The shard WAL of cluster mode (DESIGN §9) against real nats-server
// processes: a single server, and a 3-node cluster with R3 streams whose
// servers are SIGKILLed.
import { create } from "@bufbuild/protobuf";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { type LogRecord, LogRecordSchema } from "@shoal/sdk/internal";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { createShardWals, type ShardWals, type WalEntry } from "../packages/runtime/src/storage/nats/shard-wal.js";
import { FencedError, StorageError } from "../packages/runtime/src/storage/storage.js";
import { type NatsCluster, type NatsServerProcess, startNatsCluster, streamLeader } from "./support/nats-cluster.js";

/** A log record that names itself, so a test can say which appends are in the log. */
function input(id: string): LogRecord {
  return create(LogRecordSchema, { kind: { case: "input", value: { envelope: { id } } }, writtenAtMs: 1n });
}

/** The ids of the inputs in a shard's log, and the epochs of its fences, in log order. */
async function logOf(wals: ShardWals, shard: number): Promise<{ inputs: string[]; fences: bigint[]; entries: WalEntry[] }> {
  const entries: WalEntry[] = [];
  for await (const entry of wals.read(shard)) entries.push(entry);
  const records = entries.flatMap((e) => e.records);
  return {
    entries,
    inputs: records.flatMap((r) => (r.kind.case === "input" ? [r.kind.value.envelope?.id ?? ""] : [])),
    fences: records.flatMap((r) => (r.kind.case === "fence" ? [r.kind.value.epoch] : [])),
  };
}

/**
 * Generous: the machine running the tests may be busy. An append cut off by
 * a killed leader waits this long before it fails.
 */
const ackTimeoutMs = 15_000;

const ids = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

describe("the shard WAL on a single nats-server (R1)", () => {
  let cluster: NatsCluster;
  let nc: NatsConnection;
  let wals: ShardWals;
  beforeAll(async () => {
    cluster = await startNatsCluster({ size: 1 });
    nc = await cluster.connect();
    wals = createShardWals({ connection: nc, ackTimeoutMs });
  });
  afterAll(async () => {
    await nc?.close();
    await cluster?.close();
  });

  it("appends a flush as one message, groups the flushes made while one is in flight, and reads them back after a sequence", async () => {
    const wal = await wals.open(1, "node-a");
    expect(wal.epoch).toBe(1n);
    const first = wal.append(ids("a", 3).map(input));
    // Appended while the first message is in flight: both go into the next message.
    const second = wal.append(ids("b", 2).map(input));
    const third = wal.append([input("c0")]);
    expect(second.sequence).toBe(first.sequence + 1n);
    expect(third.sequence).toBe(second.sequence);
    await third.durable;
    await expect(first.durable).resolves.toBeUndefined();
    const info = await (await jetstreamManager(nc)).streams.info(wals.streamName(1));
    expect(info.config.num_replicas).toBe(1);

    const log = await logOf(wals, 1);
    expect(log.fences).toEqual([1n]);
    expect(log.inputs).toEqual([...ids("a", 3), ...ids("b", 2), "c0"]);
    expect(log.entries.map((e) => [e.sequence, e.epoch, e.records.length])).toEqual([
      [1n, 1n, 1],
      [first.sequence, 1n, 3],
      [second.sequence, 1n, 3],
    ]);
    const after: WalEntry[] = [];
    for await (const entry of wals.read(1, first.sequence)) after.push(entry);
    expect(after.map((e) => e.sequence)).toEqual([second.sequence]);
    await wal.close();
  });

  it("refuses a stale owner's append once a new owner opened, and keeps it out of the log", async () => {
    const old = await wals.open(2, "node-a");
    await old.append([input("old-1")]).durable;
    const next = await wals.open(2, "node-b");
    expect(next.epoch).toBe(old.epoch + 1n);

    // Two appends in a row, as a shard's group commits come: neither may land after the new fence.
    const stale = [old.append([input("old-2")]), old.append([input("old-3")]), old.append([input("old-4")])];
    for (const append of stale) await expect(append.durable).rejects.toThrow(FencedError);
    // Fenced for good: the next append is refused at once.
    expect(() => old.append([input("old-5")])).toThrow(FencedError);
    await next.append([input("new-1")]).durable;

    const log = await logOf(wals, 2);
    expect(log.inputs).toEqual(["old-1", "new-1"]);
    expect(log.fences).toEqual([1n, 2n]);
  });

  it("lets exactly one of two owners opening at once at the same epoch win", async () => {
    await (await wals.open(5, "node-a")).append([input("a")]).durable;
    const opens = await Promise.allSettled([wals.open(5, "node-b"), wals.open(5, "node-c")]);
    const won = opens.flatMap((o) => (o.status === "fulfilled" ? [o.value] : []));
    const lost = opens.flatMap((o) => (o.status === "rejected" ? [o.reason] : []));
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(1);
    expect(lost[0]).toBeInstanceOf(FencedError);
    await won[0]?.append([input("winner")]).durable;
    expect((await logOf(wals, 5)).inputs).toEqual(["a", "winner"]);
  });

  it("refuses to open at an epoch not above the last writer's", async () => {
    await wals.open(3, "node-a", 5n);
    await expect(wals.open(3, "node-b", 5n)).rejects.toThrow(/epoch 5: stream shoal-wal-3 was last written at epoch 5/);
    expect((await wals.open(3, "node-b")).epoch).toBe(6n);
  });

  it("reports a message another process published to the log, naming the stream and sequence", async () => {
    const js = jetstream(nc);
    /** Publishes `data` to a shard's log after one valid append, as a process other than its owner. */
    const hostile = async (shard: number, data: Uint8Array, msgId?: string) => {
      await (await wals.open(shard, "node-a")).append([input("x")]).durable;
      const h = headers();
      if (msgId !== undefined) h.set("Nats-Msg-Id", msgId);
      return (await js.publish(`shoal.wal.${shard}`, data, { headers: h })).seq;
    };
    const read = async (shard: number) => {
      for await (const _ of wals.read(shard));
    };
    const json = await hostile(4, new TextEncoder().encode('{"not":"a batch"}'), "9-9");
    await expect(read(4)).rejects.toThrow(new RegExp(`^message ${json} of stream shoal-wal-4 is not a Shoal WAL batch \\(17 bytes\\)`));
    // Valid protobuf, and an empty WalBatch.
    const empty = await hostile(6, new Uint8Array(), "9-9");
    await expect(read(6)).rejects.toThrow(`message ${empty} of stream shoal-wal-6 is not a Shoal WAL batch: it holds no record`);
    const unsigned = await hostile(7, new Uint8Array([1, 2, 3]));
    const unsignedError = new RegExp(
      `^message ${unsigned} of stream shoal-wal-7 was not written by a Shoal shard owner \\(Nats-Msg-Id missing`,
    );
    await expect(read(7)).rejects.toThrow(unsignedError);
    await expect(wals.open(7, "node-b")).rejects.toThrow(unsignedError);
    await expect(read(7)).rejects.toThrow(StorageError);
  });
});

describe("the shard WAL while its nats-server restarts", () => {
  it("opens a shard once JetStream is back, after an open that failed while the server was down", { timeout: 60_000 }, async () => {
    const cluster = await startNatsCluster({ size: 1 });
    const nc = await cluster.connect();
    try {
      const wals = createShardWals({ connection: nc, ackTimeoutMs: 1_000 });
      const server = cluster.servers[0] as NatsServerProcess;
      await server.kill();
      await expect(wals.open(0, "node-a")).rejects.toThrow();
      await server.restart();
      await cluster.ready();
      // The first open's failure is not kept: a later open asks JetStream again (once this connection is back).
      const wal = await vi.waitFor(() => wals.open(0, "node-a"), { timeout: 20_000, interval: 200 });
      expect(wal.epoch).toBe(1n);
      await wal.close();
    } finally {
      await nc.close();
      await cluster.close();
    }
  });
});

describe("the shard WAL on a 3-node nats-server cluster (R3)", () => {
  let cluster: NatsCluster;
  let nc: NatsConnection;
  let wals: ShardWals;
  beforeAll(async () => {
    cluster = await startNatsCluster({ size: 3 });
    nc = await cluster.connect();
    wals = createShardWals({ connection: nc, ackTimeoutMs });
  });
  afterAll(async () => {
    await nc?.close();
    await cluster?.close();
  });

  const leaderOf = (stream: string, not?: string) => streamLeader(cluster, nc, stream, not);

  it("keeps every acknowledged append across a SIGKILL of a follower and then of the stream leader", { timeout: 120_000 }, async () => {
    const shard = 10;
    const stream = wals.streamName(shard);
    const wal = await wals.open(shard, "node-a");
    const info = await (await jetstreamManager(nc)).streams.info(stream);
    expect(info.config.num_replicas).toBe(3);
    for (let i = 0; i < 5; i++) await wal.append([input(`before-${i}`)]).durable;

    const leader = await leaderOf(stream);
    // Not the server the test's connection is on: its publishes would be lost in the reconnect.
    const follower = cluster.servers.find((s) => s.name !== leader && s.name !== nc.info?.server_name);
    if (follower === undefined) throw new Error("no follower");
    await follower.kill();
    // Two of three replicas are a quorum: the owner goes on appending.
    for (let i = 0; i < 5; i++) await wal.append([input(`follower-down-${i}`)]).durable;
    await follower.restart();
    await leaderOf(stream);

    await cluster.server(leader).kill();
    const newLeader = await leaderOf(stream, leader);
    expect(newLeader).not.toBe(leader);
    // The old handle may have lost its connection's publish in the election: a new owner goes on.
    const next = await wals.open(shard, "node-a");
    await next.append([input("after-leader-killed")]).durable;
    await cluster.server(leader).restart();

    const log = await logOf(wals, shard);
    expect(log.inputs).toEqual([...ids("before-", 5), ...ids("follower-down-", 5), "after-leader-killed"]);
    expect(log.fences).toEqual([1n, 2n]);
  });

  it("keeps every acknowledged append, once, when the stream leader is SIGKILLed while appends are in flight", {
    timeout: 120_000,
  }, async () => {
    const shard = 11;
    const stream = wals.streamName(shard);
    const acked: string[] = [];
    let killed = false;
    let failures = 0;
    let wal = await wals.open(shard, "node-a");
    const leader = await leaderOf(stream);
    let afterKill = 0;
    for (let i = 0; afterKill < 20; i++) {
      const id = `w${i}`;
      const append = wal.append([input(id)]);
      if (!killed && acked.length === 30) {
        // The append above is in flight (or queued) while its stream's leader dies.
        await cluster.server(leader).kill();
        killed = true;
      }
      try {
        await append.durable;
        acked.push(id);
        if (killed) afterKill++;
      } catch (err) {
        // An append the election cut off is unknown: the owner opens again, as a restarted shard would.
        expect(err).toBeInstanceOf(StorageError);
        failures++;
        await leaderOf(stream, leader);
        wal = await wals.open(shard, "node-a");
      }
    }
    await cluster.server(leader).restart();
    const log = await logOf(wals, shard);
    const inLog = new Set(log.inputs);
    expect(acked.filter((id) => !inLog.has(id))).toEqual([]);
    expect(log.inputs.length).toBe(inLog.size);
    expect(log.fences.length).toBe(1 + failures);
  });

  it("refuses a stale owner's appends after a new owner on another server opened", async () => {
    const shard = 12;
    const [toA, toB] = await Promise.all([connect({ servers: cluster.servers[0]?.url }), connect({ servers: cluster.servers[2]?.url })]);
    try {
      const walsA = createShardWals({ connection: toA, ackTimeoutMs });
      const walsB = createShardWals({ connection: toB, ackTimeoutMs });
      const old = await walsA.open(shard, "node-a");
      await old.append([input("a-1")]).durable;
      const next = await walsB.open(shard, "node-b");
      const stale = [old.append([input("a-2")]), old.append([input("a-3")])];
      for (const append of stale) await expect(append.durable).rejects.toThrow(FencedError);
      await next.append([input("b-1")]).durable;
      expect((await logOf(wals, shard)).inputs).toEqual(["a-1", "b-1"]);
    } finally {
      await Promise.all([toA.close(), toB.close()]);
    }
  });
});
