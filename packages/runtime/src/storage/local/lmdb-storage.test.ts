import { closeSync, openSync, readSync } from "node:fs";
import { open as fsOpen, mkdtemp, readdir, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { open } from "lmdb";
import { afterEach, describe, expect, it } from "vitest";
import { describeShardStorageConformance } from "../shard-storage.conformance.js";
import type { ShardStorage, StorageStats } from "../shard-store.js";
import { FencedError, StorageError } from "../storage.js";
import {
  createLocalShardStorage,
  type LocalShardStorageHooks,
  type LocalShardStorageOptions,
  openLocalShardStorage,
} from "./lmdb-storage.js";

for (const fsync of [true, false]) {
  describeShardStorageConformance(`local (LMDB, fsync: ${fsync})`, async () => {
    const directory = await mkdtemp(join(tmpdir(), "shoal-lmdb-"));
    return {
      storage: await createLocalShardStorage({ directory, fsync }),
      reopen: () => createLocalShardStorage({ directory, fsync }),
      cleanup: () => rm(directory, { recursive: true, force: true }),
    };
  });
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function temporaryDirectory(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), "shoal-lmdb-"));
  cleanups.push(() => rm(directory, { recursive: true, force: true }));
  return directory;
}

/** Opens a store that the test's cleanup closes. */
async function openStorage(options: LocalShardStorageOptions, hooks: LocalShardStorageHooks = {}): Promise<ShardStorage> {
  const storage = await openLocalShardStorage(options, hooks);
  cleanups.push(() => storage.close());
  return storage;
}

function value(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

/** Turns of the event loop until `condition` holds (or a bounded number of them has passed). */
async function turnsUntil(condition: () => boolean): Promise<boolean> {
  for (let i = 0; i < 10_000 && !condition(); i++) await new Promise((resolve) => setImmediate(resolve));
  return condition();
}

/** The id of the latest transaction committed to `data.mdb`: the higher of its two meta pages' (4 KiB pages, `mm_txnid` at byte 152). */
function lastCommitted(directory: string): number {
  const fd = openSync(join(directory, "data.mdb"), "r");
  try {
    const metas = Buffer.alloc(2 * 4096);
    readSync(fd, metas, 0, metas.length, 0);
    return Math.max(Number(metas.readBigUInt64LE(152)), Number(metas.readBigUInt64LE(4096 + 152)));
  } finally {
    closeSync(fd);
  }
}

describe("local storage on LMDB", () => {
  it("commits a group on LMDB's write thread while the event loop is blocked: no JavaScript runs inside the transaction", async () => {
    const directory = await temporaryDirectory();
    const storage = await openStorage({ directory });
    const [a, b] = await Promise.all([storage.openShard(0, "node-a"), storage.openShard(1, "node-a")]);
    const before = lastCommitted(directory);
    // Two writes in one turn: a group of two, which goes to the write thread.
    const writes = [
      a.write([{ table: "instance", key: "k", value: value("a") }], []),
      b.write([{ table: "instance", key: "k", value: value("b") }], []),
    ];
    // One turn of the event loop: the group is formed and handed to LMDB.
    await new Promise((resolve) => setImmediate(resolve));
    // Then this thread is blocked: a transaction that called back into it
    // would wait here. The bound only ends the wait when that happens.
    const giveUpAt = Date.now() + 10_000;
    while (lastCommitted(directory) === before && Date.now() < giveUpAt) {}
    expect(lastCommitted(directory)).toBe(before + 1);
    await Promise.all(writes.map((write) => write.durable));
    expect(a.get("instance", "k")).toEqual(Buffer.from("a"));
    expect(b.get("instance", "k")).toEqual(Buffer.from("b"));
  });

  it("commits a lone write on the event loop, within the turn that forms its group", async () => {
    const directory = await temporaryDirectory();
    const storage = await openStorage({ directory });
    const store = await storage.openShard(0, "node-a");
    const before = lastCommitted(directory);
    const write = store.write([{ table: "instance", key: "k", value: value("v") }], []);
    let durable = false;
    void write.durable.then(() => {
      durable = true;
    });
    // Runs right after the callback that forms the group, with no I/O between:
    // LMDB's write thread can report a flush only through the event loop's I/O.
    await new Promise((resolve) => setImmediate(resolve));
    expect(durable).toBe(true);
    expect(lastCommitted(directory)).toBe(before + 1);
    expect(store.get("instance", "k")).toEqual(Buffer.from("v"));
  });

  for (const [group, writes] of [
    ["a lone write, committed on the event loop", 1],
    ["a group of two, committed on LMDB's write thread", 2],
  ] as const) {
    it(`resolves durable once the transaction is flushed to disk, not when it is committed: ${group}`, async () => {
      const directory = await temporaryDirectory();
      let hold: Promise<void> | undefined;
      const events: string[] = [];
      const storage = await openStorage(
        { directory },
        {
          // Holds LMDB's flush of a group back until the test lets it go.
          flushed: (flushed) =>
            flushed.then(async () => {
              events.push("flushed");
              await hold;
            }),
        },
      );
      const stores = await Promise.all(Array.from({ length: writes }, (_, shard) => storage.openShard(shard, "node-a")));
      let release!: () => void;
      hold = new Promise((resolve) => {
        release = resolve;
      });
      let durable = false;
      const written = stores.map((store) => store.write([{ table: "instance", key: "k", value: value("v") }], []));
      void Promise.all(written.map((write) => write.durable)).then(() => {
        events.push("durable");
        durable = true;
      });

      // Committed: every read sees it. Flushed by LMDB too; but not durable while the flush is held.
      expect(await turnsUntil(() => stores.every((store) => store.get("instance", "k") !== undefined) && events.length === 2)).toBe(true);
      await turnsUntil(() => durable);
      expect(durable).toBe(false);
      release();
      await Promise.all(written.map((write) => write.durable));
      expect(events).toEqual(["flushed", "flushed", "durable"]);
    });
  }

  it("refuses a handle's writes from the moment a group of its writes failed, before that failure is reported", async () => {
    let release!: () => void;
    const hold = new Promise<void>((resolve) => {
      release = resolve;
    });
    let full = false;
    let holding = false;
    let refusedRoom = false;
    const storage = await openStorage(
      { directory: await temporaryDirectory() },
      {
        // The first write's flush is held, so the second group's failure is reported only after it.
        flushed: (flushed) => (holding ? flushed.then(() => hold) : flushed),
        noRoom: () => {
          if (!full) return undefined;
          refusedRoom = true;
          return Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
        },
      },
    );
    const store = await storage.openShard(0, "node-a");
    holding = true;
    const first = store.write([{ table: "instance", key: "1", value: value("first") }], []);
    expect(await turnsUntil(() => store.get("instance", "1") !== undefined)).toBe(true);
    full = true;
    const second = store.write([{ table: "instance", key: "2", value: value("second") }], []);
    let secondFailed = false;
    void second.durable.catch(() => {
      secondFailed = true;
    });
    // The second group fails at once for want of room, but is not reported yet.
    expect(await turnsUntil(() => refusedRoom)).toBe(true);
    for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(secondFailed).toBe(false);
    full = false;
    holding = false;
    // A third write would build on the second, which the shard applied in memory: refused, although it would fit.
    expect(() => store.write([{ table: "instance", key: "3", value: value("third") }], [])).toThrow(
      /shard 0: an earlier write failed \(.*\); open the shard again/,
    );
    release();
    await first.durable;
    await expect(second.durable).rejects.toThrow(/a write transaction failed: disk full \(ENOSPC\)/);
    const reopened = await storage.openShard(0, "node-a");
    expect([...reopened.range("instance")].map((e) => e.key)).toEqual(["1"]);
  });

  it("refuses inside the transaction the writes a fenced handle queued before the shard was opened again", async () => {
    const storage = await openStorage({ directory: await temporaryDirectory() });
    const old = await storage.openShard(1, "node-a");
    await old.write([{ table: "instance", key: "a", value: value("1") }], []).durable;
    // Queued, then the shard is opened again before the transaction runs.
    const queued = old.write(
      [
        { table: "instance", key: "a", value: value("2") },
        { table: "instance", key: "b", value: value("2") },
      ],
      [],
    );
    const young = await storage.openShard(1, "node-b");
    await expect(queued.durable).rejects.toThrow(FencedError);
    await expect(queued.durable).rejects.toThrow(/fenced by epoch 2; its write was refused and nothing of it was stored/);
    expect(new TextDecoder().decode(young.get("instance", "a"))).toBe("1");
    expect(young.get("instance", "b")).toBeUndefined();
    expect(() => old.write([{ table: "instance", key: "c", value: value("3") }], [])).toThrow(FencedError);
    await young.write([{ table: "instance", key: "c", value: value("3") }], []).durable;
    expect([...young.range("instance")].map((e) => e.key)).toEqual(["a", "c"]);
  });

  it("keeps one open key per shard, the current epoch's, however many opens of it a group holds", async () => {
    const directory = await temporaryDirectory();
    const storage = await createLocalShardStorage({ directory });
    await storage.openShard(1, "node-a");
    // Both opens in one group: epoch 2, then 3.
    const [second, third] = await Promise.all([storage.openShard(1, "node-b"), storage.openShard(1, "node-c")]);
    expect(() => second.write([{ table: "instance", key: "a", value: value("2") }], [])).toThrow(FencedError);
    await third.write([{ table: "instance", key: "a", value: value("3") }], []).durable;
    await storage.close();
    const raw = open({ path: directory });
    try {
      const keys = [...raw.openDB<string, (string | number)[] | string>({ name: "shards", encoding: "string" }).getKeys()];
      expect(keys.filter((key) => Array.isArray(key) && key[0] === "open")).toEqual([["open", 1, "3"]]);
    } finally {
      await raw.close();
    }
  });

  it("counts flushed transactions, writes and bytes", async () => {
    const storage = await openStorage({ directory: await temporaryDirectory() });
    const store = await storage.openShard(0, "node-a");
    const before = storage.stats?.() as StorageStats;
    const writes = [
      store.write([{ table: "instance", key: "ab", value: value("xyz") }], []),
      store.write(
        [
          { table: "memo", key: "m", value: value("12345") },
          { table: "memo", key: "gone", value: undefined },
        ],
        [],
      ),
      store.write([{ table: "instance", key: "é", value: new Uint8Array(0) }], []),
    ];
    await Promise.all(writes.map((w) => w.durable));
    const after = storage.stats?.() as StorageStats;
    expect(after.groups - before.groups).toBe(1);
    expect(after.records - before.records).toBe(3);
    // Keys in UTF-8 plus values: 2+3, 1+5, 4+0, 2+0.
    expect(after.bytes - before.bytes).toBe(5 + 6 + 4 + 2);
  });

  it("refuses a second open of a directory in use, and opens it again once closed", async () => {
    const directory = await temporaryDirectory();
    const first = await openLocalShardStorage({ directory }, {});
    await expect(createLocalShardStorage({ directory })).rejects.toThrow(
      `storage directory ${directory} is in use by the process with pid ${process.pid}`,
    );
    const store = await first.openShard(0, "node-a");
    await store.write([{ table: "instance", key: "k", value: value("v") }], []).durable;
    await first.close();
    const again = await openStorage({ directory });
    expect((await again.openShard(0, "node-b")).get("instance", "k")).toEqual(Buffer.from("v"));
  });

  it("refuses bad options", async () => {
    await expect(createLocalShardStorage({ directory: "" })).rejects.toThrow(/directory is required/);
    await expect(createLocalShardStorage({ directory: await temporaryDirectory(), mapSize: 10 })).rejects.toThrow(/mapSize/);
    const file = join(await temporaryDirectory(), "a-file");
    await writeFile(file, "");
    await expect(createLocalShardStorage({ directory: join(file, "store") })).rejects.toThrow(/cannot create storage directory .*ENOTDIR/);
  });

  it("keeps a directory whose name has a dot a directory", async () => {
    const directory = join(await temporaryDirectory(), "state.v1");
    const storage = await openStorage({ directory });
    await (await storage.openShard(0, "node-a")).write([{ table: "instance", key: "k", value: value("v") }], []).durable;
    expect((await readdir(directory)).sort()).toEqual(["LOCK", "data.mdb", "lock.mdb"]);
  });

  describe("a damaged or foreign data file", () => {
    /** A store with some data in it, closed. */
    async function written(): Promise<string> {
      const directory = await temporaryDirectory();
      const storage = await createLocalShardStorage({ directory });
      const store = await storage.openShard(0, "node-a");
      const changes = Array.from({ length: 500 }, (_, i) => ({
        table: "instance" as const,
        key: `k${i}`,
        value: new Uint8Array(200).fill(i),
      }));
      await store.write(changes, []).durable;
      await storage.close();
      return directory;
    }

    it("refuses a file whose meta pages are overwritten, naming it and what to do", async () => {
      const directory = await written();
      const file = await fsOpen(join(directory, "data.mdb"), "r+");
      await file.write(Buffer.alloc(8192, 0xab), 0, 8192, 0);
      await file.close();
      const opening = createLocalShardStorage({ directory });
      await expect(opening).rejects.toThrow(StorageError);
      await expect(createLocalShardStorage({ directory })).rejects.toThrow(
        new RegExp(
          `${join(directory, "data.mdb")} is damaged or not an LMDB file .*: restore the directory from a backup, or move it away`,
        ),
      );
      // The refusal released the lock: the next try is refused for the damage again, not for the lock.
      await expect(createLocalShardStorage({ directory })).rejects.toThrow(/is damaged/);
    });

    it("refuses a truncated file", async () => {
      const directory = await written();
      const path = join(directory, "data.mdb");
      expect((await stat(path)).size).toBeGreaterThan(3 * 4096);
      // The meta pages stay; the trees are gone.
      await truncate(path, 3 * 4096);
      await expect(createLocalShardStorage({ directory })).rejects.toThrow(/data\.mdb is damaged .*past the end of the file .*cut short/);
      await truncate(path, 100);
      await expect(createLocalShardStorage({ directory })).rejects.toThrow(/data\.mdb is damaged .*fewer than LMDB's two meta pages/);
      await truncate(path, 0);
      await expect(createLocalShardStorage({ directory })).rejects.toThrow(/data\.mdb is damaged/);
    });

    it("refuses an LMDB store Shoal did not write", async () => {
      const directory = await temporaryDirectory();
      const foreign = open({ path: directory });
      await foreign.put("something", "else");
      await foreign.close();
      await expect(createLocalShardStorage({ directory })).rejects.toThrow(/data\.mdb is an LMDB store not written by Shoal/);
    });
  });

  it("refuses a directory holding pieces of the earlier local backend's log that cannot be converted, and says so", async () => {
    // Converting a whole old directory, and its refusals: test/legacy-upgrade.test.ts.
    const directory = await temporaryDirectory();
    await writeFile(join(directory, "wal-00000000000000000001.log"), "old");
    await expect(createLocalShardStorage({ directory })).rejects.toThrow(
      `storage directory ${directory} holds old log files but no ${join(directory, "MANIFEST")}`,
    );
    expect((await readdir(directory)).filter((name) => !name.endsWith(".mdb")).sort()).toEqual(["LOCK", "wal-00000000000000000001.log"]);
    // Refused, the store is closed: the directory opens once the old file is gone.
    await rm(join(directory, "wal-00000000000000000001.log"));
    await (await createLocalShardStorage({ directory })).close();
  });
});
