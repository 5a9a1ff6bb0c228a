import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { InstanceStateSchema } from "@shoal/sdk/internal";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { snapshotOf } from "../shard-snapshot.js";
import type { ShardStorage } from "../shard-store.js";
import { put } from "../shard-tables.js";
import { StorageError } from "../storage.js";
import { createLocalShardStorage } from "./lmdb-storage.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "shoal-lmdb-backup-"));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

const instance = (key: string, n: number) =>
  put("instance", `g.v1.G/${key}`, create(InstanceStateSchema, { type: "g.v1.G", key, state: new Uint8Array([n]) }));

async function snapshots(storage: ShardStorage) {
  const out = [];
  for (const shard of [0, 1]) {
    const store = await storage.openShard(shard, "reader");
    out.push(snapshotOf(store, 0n));
    await store.close();
  }
  return out;
}

describe("online backup of the local store", () => {
  it("copies every shard as of one transaction while writes go on, and a store opened on the copy has it", async () => {
    const storage = await createLocalShardStorage({ directory: join(dir, "store") });
    const shards = [await storage.openShard(0, "n1"), await storage.openShard(1, "n1")];
    for (let i = 0; i < 100; i++) await shards[i % 2]?.write([instance(`k${i}`, i)], []).durable;
    const before = await snapshots(storage);
    // Reopened by the reads above: write through fresh handles.
    const writers = [await storage.openShard(0, "n1"), await storage.openShard(1, "n1")];
    const copying = storage.backup?.(join(dir, "copy"));
    // Writes made while the copy runs may or may not be in it; those before are.
    const later = writers.map((store, shard) => store.write([instance(`late${shard}`, 1)], []).durable);
    const { directory, bytes } = (await copying) ?? { directory: "", bytes: 0 };
    expect(directory).toBe(join(dir, "copy"));
    await Promise.all(later);
    expect(bytes).toBeGreaterThan(0);
    await storage.close();

    const copy = await createLocalShardStorage({ directory: join(dir, "copy") });
    const copied = await snapshots(copy);
    await copy.close();
    for (const [shard, snapshot] of copied.entries()) {
      const keys = snapshot.instances.map((i) => i.key).filter((k) => !k.startsWith("late"));
      expect(keys).toEqual(before[shard]?.instances.map((i) => i.key));
    }
  });

  it("refuses a directory that is not empty, or the store's own", async () => {
    const storage = await createLocalShardStorage({ directory: join(dir, "store") });
    const full = join(dir, "taken");
    await createLocalShardStorage({ directory: full }).then((s) => s.close());
    await expect(storage.backup?.(full)).rejects.toThrow(StorageError);
    await expect(storage.backup?.(full)).rejects.toThrow(`backup directory ${full} is not empty`);
    await expect(storage.backup?.(join(dir, "store"))).rejects.toThrow("into itself");
    await storage.close();
  });
});
