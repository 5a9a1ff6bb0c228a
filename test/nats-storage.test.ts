// The `nats` shard storage's own guarantees, beyond the conformance suite, on
// real nats-server processes: restoring a node's local store from a snapshot
// plus the WAL, a new owner on another node, a SIGKILLed stream leader, and
// hostile content in the WAL and the snapshot buckets.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { headers, type NatsConnection } from "@nats-io/transport-node";
import { EnvelopeSchema, InstanceStateSchema, WalBatchSchema } from "@shoal/sdk/internal";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createNatsShardStorage, type NatsShardStorage } from "../packages/runtime/src/storage/nats/nats-shard-storage.js";
import { type ShardStore, shardTables, type TableChange } from "../packages/runtime/src/storage/shard-store.js";
import { orderKey, put, putMeta, remove } from "../packages/runtime/src/storage/shard-tables.js";
import { FencedError, StorageError } from "../packages/runtime/src/storage/storage.js";
import { type NatsCluster, startNatsCluster, streamLeader } from "./support/nats-cluster.js";
import { removeNatsPrefix, uniquePrefix, waitForPlacement } from "./support/nats-storage.js";

/** Generous: the machine running the tests may be busy, and a killed leader holds appends until this. */
const ackTimeoutMs = 15_000;

/**
 * A shard's writes as the shard makes them, with consistent tables: each op
 * upserts an instance, accepts a message into `pending` under the next order
 * key, every third op removes the oldest pending message, and `meta` holds
 * the counts. The order keys do not start at 1, as in a shard that ran a while:
 * a snapshot numbers them again, so a restore must put them back.
 */
class ShardModel {
  private readonly instances = new Set<string>();
  private readonly pending: bigint[] = [];
  private nextOrder = 1000n;

  op(i: number): TableChange[] {
    const id = `cart/${i % 11}`;
    this.instances.add(id);
    const changes: TableChange[] = [
      put("instance", id, create(InstanceStateSchema, { key: `${i % 11}`, type: "cart", state: new TextEncoder().encode(`state ${i}`) })),
      put("pending", orderKey(this.nextOrder), create(EnvelopeSchema, { id: `m${i}`, handler: "Add" })),
    ];
    this.pending.push(this.nextOrder);
    this.nextOrder += 1n;
    if (i % 3 === 2) changes.push(remove("pending", orderKey(this.pending.shift() as bigint)));
    changes.push(
      putMeta("nextOrder", this.nextOrder),
      putMeta("nextOutboxSequence", 1n),
      putMeta("instances", BigInt(this.instances.size)),
      putMeta("memos", 0n),
      putMeta("journals", 0n),
    );
    return changes;
  }
}

/** Every table of a shard, as [table, key, value] rows. */
function dump(store: ShardStore): string[][] {
  return shardTables.flatMap((table) => Array.from(store.range(table), (e) => [table, e.key, Buffer.from(e.value).toString("hex")]));
}

/** Writes ops `from`…`to - 1`, up to 8 at once, and waits until all are durable. */
async function writeOps(store: ShardStore, model: ShardModel, from: number, to: number): Promise<void> {
  for (let i = from; i < to; i += 8) {
    const writes = [];
    for (let k = i; k < Math.min(to, i + 8); k++) writes.push(store.write(model.op(k), []).durable);
    await Promise.all(writes);
  }
}

describe("the nats shard storage on a single nats-server (R1)", () => {
  let cluster: NatsCluster;
  let nc: NatsConnection;
  const cleanups: (() => Promise<unknown>)[] = [];
  beforeAll(async () => {
    cluster = await startNatsCluster({ size: 1 });
    nc = await cluster.connect();
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  afterAll(async () => {
    await nc?.close();
    await cluster?.close();
  });

  /** A fresh prefix and a function opening a storage on a new local directory ("a node"). */
  async function deployment(snapshotAfterBytes?: number) {
    const prefix = uniquePrefix();
    const warnings: string[] = [];
    cleanups.push(() => removeNatsPrefix(nc, prefix));
    const node = async (): Promise<{ storage: NatsShardStorage; directory: string }> => {
      const directory = await mkdtemp(join(tmpdir(), "shoal-nats-node-"));
      const storage = await createNatsShardStorage({
        servers: cluster.urls,
        directory,
        prefix,
        ackTimeoutMs,
        ...(snapshotAfterBytes === undefined ? {} : { snapshotAfterBytes }),
        logger: { warn: (message: string) => warnings.push(message) },
      });
      cleanups.push(async () => {
        await storage.close();
        await rm(directory, { recursive: true, force: true });
      });
      return { storage, directory };
    };
    return { prefix, warnings, node };
  }

  async function firstSequence(stream: string): Promise<number> {
    return (await (await jetstreamManager(nc)).streams.info(stream)).state.first_seq;
  }

  it("rebuilds a node's deleted local store from the latest snapshot and the WAL after it, keys and all", async () => {
    const { prefix, node } = await deployment();
    const directory = await mkdtemp(join(tmpdir(), "shoal-nats-node-"));
    cleanups.push(() => rm(directory, { recursive: true, force: true }));
    const open = () => createNatsShardStorage({ servers: cluster.urls, directory, prefix, ackTimeoutMs });
    const model = new ShardModel();

    let storage = await open();
    const store = await storage.openShard(7, "node-a");
    await writeOps(store, model, 0, 40);
    const taken = await storage.snapshotShard(7);
    // The WAL is cut below the snapshot: the messages before it exist only in the snapshot now.
    expect(await firstSequence(`${prefix}-wal-7`)).toBe(Number(taken.sequence));
    // After the snapshot: removes pending messages accepted before it, by their original keys.
    await writeOps(store, model, 40, 70);
    const expected = dump(store);
    expect(expected.filter(([table]) => table === "pending").length).toBeGreaterThan(5);
    await storage.close();

    await rm(directory, { recursive: true, force: true });
    storage = await open();
    cleanups.push(() => storage.close());
    const restored = await storage.openShard(7, "node-a");
    expect(dump(restored)).toEqual(expected);
    // It goes on writing where the shard left off.
    await writeOps(restored, model, 70, 75);
    expect(dump(restored)).not.toEqual(expected);

    // A node whose local store was never there restores the same way.
    const other = await (await node()).storage.openShard(7, "node-b");
    expect(dump(other)).toEqual(dump(restored));
  });

  it("lets a new owner on another node restore every acknowledged write, snapshotting on its own by bytes, and fences the old owner", async () => {
    const { prefix, warnings, node } = await deployment(4_000);
    const a = await node();
    const b = await node();
    const model = new ShardModel();
    const old = await a.storage.openShard(3, "node-a");
    await writeOps(old, model, 0, 120);
    const expected = dump(old);

    const young = await b.storage.openShard(3, "node-b");
    expect(young.epoch).toBeGreaterThan(old.epoch);
    expect(dump(young)).toEqual(expected);

    // The old owner does not know yet: its append is refused by the WAL's fence, and nothing of it lands.
    const stale = old.write(model.op(500), []);
    await expect(stale.durable).rejects.toThrow(FencedError);
    // From then on it knows, and refuses at once.
    expect(() => old.write(model.op(501), [])).toThrow(FencedError);
    await writeOps(young, model, 120, 125);
    expect(dump(young).some(([table, , value]) => table === "pending" && Buffer.from(value as string, "hex").includes("m500"))).toBe(false);

    // Node A snapshotted on its own (every 4000 bytes) and cut the WAL below.
    await a.storage.close();
    expect(warnings).toEqual([]);
    const pointers = await new Kvm(jetstream(nc)).open(`${prefix}-snapshot-pointers`);
    const keys: string[] = [];
    for await (const key of await pointers.keys("3.*")) keys.push(key);
    expect(keys).toHaveLength(1);
    expect(await firstSequence(`${prefix}-wal-3`)).toBeGreaterThan(1);
  });

  it("lets a new owner restore while the old owner stores a newer snapshot and removes the pointer the new owner just listed", async () => {
    const { prefix, node } = await deployment();
    const a = await node();
    const model = new ShardModel();
    const old = await a.storage.openShard(8, "node-a");
    await writeOps(old, model, 0, 40);
    await a.storage.snapshotShard(8);
    await writeOps(old, model, 40, 80);
    const expected = dump(old);

    // Node B's connection: before its first read of a pointer, node A (not knowing yet that it is fenced) snapshots again,
    // which purges the WAL below the new snapshot and removes the older pointer, the one B listed.
    const raw = await cluster.connect();
    cleanups.push(() => raw.close());
    const pointerReads = [`$JS.API.DIRECT.GET.KV_${prefix}-snapshot-pointers`, `$JS.API.STREAM.MSG.GET.KV_${prefix}-snapshot-pointers`];
    let moved: Promise<unknown> | undefined;
    const connection = new Proxy(raw, {
      get(target, name) {
        if (name === "request") {
          return async (subject: string, ...rest: Parameters<NatsConnection["request"]> extends [string, ...infer R] ? R : never) => {
            if (pointerReads.some((s) => subject.startsWith(s))) {
              moved ??= a.storage.snapshotShard(8);
              await moved;
            }
            return target.request(subject, ...rest);
          };
        }
        const value = Reflect.get(target, name, target);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const directory = await mkdtemp(join(tmpdir(), "shoal-nats-node-"));
    const b = await createNatsShardStorage({ connection, directory, prefix, ackTimeoutMs });
    cleanups.push(async () => {
      await b.close();
      await rm(directory, { recursive: true, force: true });
    });

    const young = await b.openShard(8, "node-b");
    expect(moved).toBeDefined();
    expect(dump(young)).toEqual(expected);
    await writeOps(young, model, 80, 85);
  });

  it("rebuilds a node's local store built from an earlier stream of the same name, and warns", async () => {
    const { prefix, warnings, node } = await deployment();
    const directory = await mkdtemp(join(tmpdir(), "shoal-nats-node-"));
    cleanups.push(() => rm(directory, { recursive: true, force: true }));
    const open = () =>
      createNatsShardStorage({ servers: cluster.urls, directory, prefix, ackTimeoutMs, logger: { warn: (m: string) => warnings.push(m) } });
    const text = (s: string) => new TextEncoder().encode(s);

    let storage = await open();
    const first = await storage.openShard(4, "node-a");
    await first.write([{ table: "instance", key: "old", value: text("from the first stream") }], []).durable;
    await storage.close();

    // The stream is deleted and written again, further than the local store got, by another node.
    await (await jetstreamManager(nc)).streams.delete(`${prefix}-wal-4`);
    const other = await (await node()).storage.openShard(4, "node-b");
    for (let i = 0; i < 5; i++) await other.write([{ table: "instance", key: `new${i}`, value: text("x") }], []).durable;

    storage = await open();
    cleanups.push(() => storage.close());
    const again = await storage.openShard(4, "node-a");
    expect(again.get("instance", "old")).toBeUndefined();
    expect([...again.range("instance")].map((e) => e.key)).toEqual(["new0", "new1", "new2", "new3", "new4"]);
    expect(warnings.join("\n")).toMatch(new RegExp(`was built from another stream ${prefix}-wal-4`));
  });

  it("reports hostile content in the WAL and the snapshot buckets, naming the stream, bucket, object or key", async () => {
    const { prefix, node } = await deployment();
    const writer = await node();
    const model = new ShardModel();
    const js = jetstream(nc);

    // A WAL message with a proper id but a change to a table that does not exist.
    const store = await writer.storage.openShard(5, "node-a");
    await writeOps(store, model, 0, 3);
    const h = headers();
    h.set("Nats-Msg-Id", `${store.epoch}-99`);
    const bogus = toBinary(WalBatchSchema, create(WalBatchSchema, { changes: [{ table: "bogus", key: "k" }] }));
    const ack = await js.publish(`${prefix}.wal.5`, bogus, { headers: h });
    await expect((await node()).storage.openShard(5, "node-b")).rejects.toThrow(
      new RegExp(
        `message ${ack.seq} of stream ${prefix}-wal-5 is not a Shoal WAL batch: table change 0 names no shard table \\("bogus"\\)`,
      ),
    );

    // A snapshot object overwritten with bytes that are not a snapshot.
    const snapshotted = await writer.storage.openShard(6, "node-a");
    await writeOps(snapshotted, model, 0, 3);
    const { object } = await writer.storage.snapshotShard(6);
    const objects = await new Objm(js).open(`${prefix}-snapshots`);
    await objects.putBlob({ name: object }, new TextEncoder().encode("not a snapshot"));
    await expect((await node()).storage.openShard(6, "node-b")).rejects.toThrow(
      new RegExp(`snapshot ${object} of shard 6 in object store ${prefix}-snapshots is not a Shoal shard snapshot`),
    );

    // A pointer that is not JSON, and a WAL cut below what any snapshot covers.
    const pointers = await new Kvm(js).open(`${prefix}-snapshot-pointers`);
    const third = await writer.storage.openShard(8, "node-a");
    await writeOps(third, model, 0, 3);
    await writer.storage.snapshotShard(8);
    await pointers.put(`8.${orderKey(999)}`, "{nonsense");
    await expect((await node()).storage.openShard(8, "node-b")).rejects.toThrow(
      new RegExp(`pointer 8\\.${orderKey(999)} of KV bucket ${prefix}-snapshot-pointers is not JSON`),
    );
    const fourth = await writer.storage.openShard(9, "node-a");
    await writeOps(fourth, model, 0, 3);
    await (await jetstreamManager(nc)).streams.purge(`${prefix}-wal-9`, { seq: 3 });
    const failed = (await node()).storage.openShard(9, "node-b");
    await expect(failed).rejects.toThrow(StorageError);
    await expect(failed).rejects.toThrow(
      new RegExp(
        `shard 9 cannot be restored: stream ${prefix}-wal-9 starts at sequence 3, but KV bucket ${prefix}-snapshot-pointers holds no snapshot of it; messages 1–2 are lost`,
      ),
    );
  });
});

describe("the nats shard storage on a 3-node nats-server cluster (R3)", () => {
  let cluster: NatsCluster;
  let nc: NatsConnection;
  beforeAll(async () => {
    cluster = await startNatsCluster({ size: 3 });
    nc = await cluster.connect();
    await waitForPlacement(nc);
  });
  afterAll(async () => {
    await nc?.close();
    await cluster?.close();
  });

  it("loses no acknowledged write when the WAL stream's leader is SIGKILLed while writes are in flight, nor when the quorum is lost", {
    timeout: 300_000,
  }, async () => {
    const prefix = uniquePrefix();
    const directories = [await mkdtemp(join(tmpdir(), "shoal-nats-node-")), await mkdtemp(join(tmpdir(), "shoal-nats-node-"))];
    // Short: the appends in flight while the quorum is lost fail after this.
    const open = (directory: string, timeout: number) =>
      createNatsShardStorage({ servers: cluster.urls, directory, prefix, ackTimeoutMs: timeout, snapshotAfterBytes: 20_000 });
    const a = await open(directories[0] as string, 4_000);
    try {
      let store = await a.openShard(2, "node-a");
      const stream = `${prefix}-wal-2`;
      const acknowledged = new Set<string>();
      let failures = 0;
      // Writes and reopenings that failed while the quorum was lost.
      let failuresWithoutQuorum = 0;
      let failed!: () => void;
      const failure = new Promise<void>((resolve) => {
        failed = resolve;
      });
      // At 100 acknowledged writes the stream's leader dies; at 200 the next leader too, so the
      // one server left has no quorum until both come back.
      const outage = { first: "", second: "", over: false, done: Promise.resolve(), error: undefined as unknown };
      const killLeader = async () => {
        outage.first = await streamLeader(cluster, nc, stream);
        await cluster.server(outage.first).kill();
      };
      const killQuorum = async () => {
        // Whether the follower left is current does not matter here: the quorum is lost either way, and every server
        // comes back before the check (nats-server 2.9 can leave a restarted replica behind for minutes; waiting for it
        // ran this test into its timeout on CI).
        outage.second = await streamLeader(cluster, nc, stream, outage.first, { followersCurrent: false });
        await cluster.server(outage.second).kill();
        // Until something failed for want of the quorum, or for long enough that whatever was in flight failed. Not
        // until a write failed: every writer may be waiting for a reopening that began before the kill and cannot end
        // without the quorum (the servers then never came back, and the test ran into its deadline).
        await Promise.race([failure, new Promise((resolve) => setTimeout(resolve, 3 * 4_000))]);
        await cluster.server(outage.first).restart();
        await cluster.server(outage.second).restart();
        outage.over = true;
      };
      const withoutQuorum = () => {
        if (outage.second !== "" && !outage.over) {
          failuresWithoutQuorum++;
          failed();
        }
      };
      let reopening: Promise<void> | undefined;
      const reopen = () => {
        reopening ??= (async () => {
          // Bounded, so that a shard that can never be opened again fails the test with its reason instead of its timeout.
          const deadline = Date.now() + 180_000;
          for (;;) {
            try {
              store = await a.openShard(2, "node-a");
              return;
            } catch (err) {
              // No leader or no quorum yet.
              withoutQuorum();
              if (Date.now() > deadline) {
                outage.error ??= new Error(`shard 2 could not be opened again for 180 s: ${(err as Error).message}`);
                return;
              }
              await new Promise((resolve) => setTimeout(resolve, 200));
            }
          }
        })().finally(() => {
          reopening = undefined;
        });
        return reopening;
      };
      // 6 writers; the shard is opened again (a new epoch) when its handle broke, as a shard would.
      const writer = async (w: number) => {
        // Writing goes on until the servers are back, so that writes are in flight throughout the outage.
        for (let n = 0; (acknowledged.size < 400 || !outage.over) && outage.error === undefined; n++) {
          const key = `w${w}/${n}`;
          const current = store;
          try {
            await current.write([{ table: "instance", key, value: new TextEncoder().encode(key) }], []).durable;
            acknowledged.add(key);
            // A step of the outage that fails (no new leader within a minute) stops the writers and fails the test with its reason.
            const stop = (err: unknown) => {
              outage.error ??= err;
            };
            if (acknowledged.size === 100) outage.done = killLeader().catch(stop);
            if (acknowledged.size === 200) outage.done = outage.done.then(killQuorum).catch(stop);
          } catch (err) {
            expect(err).toBeInstanceOf(StorageError);
            failures++;
            withoutQuorum();
            if (store === current) await reopen();
            else await reopening;
          }
        }
      };
      await Promise.all(Array.from({ length: 6 }, (_, w) => writer(w)));
      await outage.done;
      if (outage.error !== undefined) throw outage.error;
      expect(outage.second).not.toBe("");
      // Every server back and each stream led again (not necessarily every replica current: see above).
      await cluster.ready();
      for (const name of [stream, `KV_${prefix}-snapshot-pointers`, `OBJ_${prefix}-snapshots`])
        await streamLeader(cluster, nc, name, undefined, { followersCurrent: false });

      // Another node takes the shard and finds every acknowledged write.
      const b = await open(directories[1] as string, ackTimeoutMs);
      try {
        const taken = await b.openShard(2, "node-b");
        const missing = [...acknowledged].filter((key) => taken.get("instance", key) === undefined);
        expect(missing).toEqual([]);
        // The outage was felt: appends in flight failed (a write, or a reopening's fence while the quorum was lost), and
        // none of them was acknowledged.
        expect(failures).toBeGreaterThan(0);
        expect(failuresWithoutQuorum).toBeGreaterThan(0);
      } finally {
        await b.close();
      }
    } finally {
      // Best effort, so that a failure above is the one reported.
      for (const server of cluster.servers) if (!server.running) await server.restart().catch(() => undefined);
      await a.close().catch(() => undefined);
      await cluster.ready().catch(() => undefined);
      await removeNatsPrefix(nc, prefix).catch(() => undefined);
      for (const directory of directories) await rm(directory, { recursive: true, force: true });
    }
  });
});
