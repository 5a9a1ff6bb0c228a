import { create, equals } from "@bufbuild/protobuf";
import { type ShardSnapshot, ShardSnapshotSchema } from "@shoal/sdk/internal";
import { describe, expect, it } from "vitest";
import { createMemoryStorage } from "./memory/memory-storage.js";
import { restoreBatches, restoreChanges, snapshotOf } from "./shard-snapshot.js";
import { type ShardStorage, type ShardStore, shardTables, type TableChange } from "./shard-store.js";
import { expiryKey, metaKeys, orderKey, readMeta } from "./shard-tables.js";

const account = { type: "bank.v1.Account", key: "alice" };

/**
 * A shard with an entry in every table, expiring instances and memos among
 * them; keyed tables in key order, as `snapshotOf` lists them.
 */
function fullSnapshot(): ShardSnapshot {
  return create(ShardSnapshotSchema, {
    shard: 3,
    sequence: 0n,
    instances: [
      { type: "bank.v1.Account", key: "alice", state: new Uint8Array([8, 5]) },
      { type: "bank.v1.Account", key: "bob", state: new Uint8Array([8, 7]), expiresAtMs: 1_700_000_000_000n },
      { type: "g.v1.Greeter", key: "x", state: new Uint8Array([1]) },
    ],
    pending: [
      { id: "m2", target: account, handler: "Deposit", payload: new Uint8Array([8, 1]), deliverAtMs: 1_800_000_000_000n },
      { id: "m1", target: account, handler: "Deposit", payload: new Uint8Array([8, 2]), source: { shard: 1, sequence: 4n } },
    ],
    outbox: [
      { sequence: 7n, envelope: { id: "o7", target: account, handler: "Deposit" } },
      { sequence: 9n, envelope: { id: "o9", target: account, handler: "Withdraw" } },
    ],
    memos: [
      { id: "call\u0000inv/0", requestHash: new Uint8Array([3]), reply: {} },
      {
        id: "idem\u0000a",
        requestHash: new Uint8Array([1, 2]),
        reply: {},
        expiresAtMs: 1_700_000_100_000n,
        target: account,
        handler: "Deposit",
      },
    ],
    watermarks: [
      { shard: 1, sequence: 4n },
      { shard: 12, sequence: 40n },
    ],
    journals: [{ invocationId: "inv-9", results: [{ callId: "inv-9/0" }] }],
    nextOutboxSequence: 10n,
    egress: [{ egress: "stdout", typeName: "g.v1.Greeted", payload: new Uint8Array([2]), id: "e1" }],
    deadLetters: [{ envelopeId: "dead-1", target: account, handler: "Withdraw", deadAtMs: 5n }],
  });
}

async function restoreInto(storage: ShardStorage, snapshot: ShardSnapshot, batchSize?: number): Promise<ShardStore> {
  const store = await storage.openShard(snapshot.shard, "restorer");
  for (const batch of restoreBatches(snapshot, batchSize)) await store.write(batch, []).durable;
  return store;
}

describe("shard snapshots", () => {
  it("a snapshot restored into a fresh shard reads back equal", async () => {
    const storage = createMemoryStorage();
    const snapshot = fullSnapshot();
    const store = await restoreInto(storage, snapshot);
    const back = snapshotOf(store, 0n);
    expect(back).toEqual(snapshot);
    expect(equals(ShardSnapshotSchema, back, snapshot)).toBe(true);
    // The derived entries: expiry indexes and the order counter.
    expect([...store.range("instanceExpiry")].map((e) => e.key)).toEqual([expiryKey(1_700_000_000_000n, "bank.v1.Account/bob")]);
    expect([...store.range("memoExpiry")].map((e) => e.key)).toEqual([expiryKey(1_700_000_100_000n, "idem\u0000a")]);
    expect(readMeta(store.get("meta", metaKeys.nextOrder), 0n)).toBe(5n);
    expect(readMeta(store.get("meta", metaKeys.instances), 0n)).toBe(3n);
    expect(readMeta(store.get("meta", metaKeys.memos), 0n)).toBe(2n);
    expect(readMeta(store.get("meta", metaKeys.journals), 0n)).toBe(1n);
    expect([...store.range("instance")].map((e) => e.key)).toEqual(["bank.v1.Account/alice", "bank.v1.Account/bob", "g.v1.Greeter/x"]);
    expect([...store.range("pending")].map((e) => e.key)).toEqual([orderKey(1), orderKey(2)]);
    await storage.close();
  });

  it("a snapshot of a store restored again gives the same tables", async () => {
    const storage = createMemoryStorage();
    const first = await restoreInto(storage, fullSnapshot());
    const copy = create(ShardSnapshotSchema, { ...snapshotOf(first), shard: 4 });
    const second = await restoreInto(storage, copy);
    for (const table of shardTables) {
      expect([...second.range(table)], table).toEqual([...first.range(table)]);
    }
    await storage.close();
  });

  it("restoreChanges is every batch of restoreBatches", () => {
    const snapshot = fullSnapshot();
    expect(restoreChanges(snapshot)).toEqual([...restoreBatches(snapshot, 3)].flat());
  });

  it("a big shard is restored in bounded batches, each encoded only when asked for", async () => {
    const count = 25_000;
    const snapshot = create(ShardSnapshotSchema, {
      shard: 0,
      instances: Array.from({ length: count }, (_, i) => ({
        type: "g.v1.Greeter",
        key: `k${String(i).padStart(6, "0")}`,
        state: new Uint8Array([i % 256]),
      })),
    });
    // Counts how far the restore has read the instances.
    let furthest = -1;
    snapshot.instances = new Proxy(snapshot.instances, {
      get(target, property, receiver) {
        if (typeof property === "string" && /^\d+$/.test(property)) furthest = Math.max(furthest, Number(property));
        return Reflect.get(target, property, receiver);
      },
    });
    const batches = restoreBatches(snapshot, 1_000);
    const first = batches.next();
    expect(first.done).toBe(false);
    expect((first.value as TableChange[]).length).toBe(1_000);
    expect(furthest).toBeLessThan(1_000);

    const storage = createMemoryStorage();
    const store = await storage.openShard(0, "restorer");
    let largest = 0;
    for (let batch = first; !batch.done; batch = batches.next()) {
      largest = Math.max(largest, batch.value.length);
      await store.write(batch.value, []).durable;
    }
    expect(largest).toBe(1_000);
    expect(furthest).toBe(count - 1);
    const back = snapshotOf(store);
    expect(back.instances.length).toBe(count);
    expect(back.instances.at(-1)?.key).toBe("k024999");
    await storage.close();
  });
});
