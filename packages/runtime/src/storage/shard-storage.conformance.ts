// The one test suite every backend of the shard store interface passes
// (memory, local, nats): the shard relies on these semantics, not on a
// particular backend.
import { describe, expect, it } from "vitest";
import { maxKeyBytes, type ShardStorage, type ShardStore, type ShardTable, type TableChange, type WriteResult } from "./shard-store.js";
import { FencedError, StorageError } from "./storage.js";

/** What a backend can show: a memory backend keeps nothing across instances. */
export interface ShardStorageCapabilities {
  /** Reopening the same storage finds what was durable (memory: no). */
  readonly survivesRestart: boolean;
}

/** A backend under test, made fresh for each test by the suite's factory. */
export interface ShardStorageUnderTest {
  readonly storage: ShardStorage;
  /**
   * Opens the same storage again, as a restarted process would; the suite
   * calls it after closing the previous one. Omit for backends that keep
   * nothing across instances (memory), whose capabilities say so.
   */
  readonly reopen?: () => Promise<ShardStorage>;
  /** Removes what the backend left behind (temporary directories, streams). */
  cleanup(): Promise<void>;
}

/**
 * Defines the shard storage conformance suite for one backend.
 *
 * @param name - shown in the test names, e.g. `local`
 * @param create - makes a fresh, empty backend for each test
 */
export function describeShardStorageConformance(
  name: string,
  create: () => Promise<ShardStorageUnderTest>,
  capabilities: ShardStorageCapabilities = { survivesRestart: true },
): void {
  // Cases a backend cannot take part in are not defined for it, rather than
  // defined and skipped: every case that is listed runs.
  const restartIt = capabilities.survivesRestart ? it : undefined;
  describe(`shard storage conformance: ${name}`, () => {
    it("writes, reads back once durable, overwrites and deletes", () =>
      run(create, async (t) => {
        const store = await t.storage.openShard(0, "node-a");
        expect(store.shard).toBe(0);
        expect(store.get("instance", "c/1")).toBeUndefined();
        await store.write([put("instance", "c/1", "one"), put("instance", "c/2", "two"), put("memo", "c/1", "memo")], []).durable;
        expect(text(store.get("instance", "c/1"))).toBe("one");
        expect(text(store.get("memo", "c/1"))).toBe("memo");
        expect(store.get("journal", "c/1")).toBeUndefined();

        // Changes apply in order: the last write of a key wins within one write too.
        await store.write(
          [put("instance", "c/1", "uno"), del("instance", "c/2"), put("instance", "c/3", "x"), put("instance", "c/3", "tres")],
          [],
        ).durable;
        expect(text(store.get("instance", "c/1"))).toBe("uno");
        expect(store.get("instance", "c/2")).toBeUndefined();
        expect(text(store.get("instance", "c/3"))).toBe("tres");
        // Deleting a key that is not there is no error.
        await store.write([del("instance", "never")], []).durable;

        // An empty value (index tables) is a value, not a deletion.
        await store.write([{ table: "memoExpiry", key: "0001/m", value: new Uint8Array(0) }], []).durable;
        const empty = store.get("memoExpiry", "0001/m");
        expect(empty).toBeInstanceOf(Uint8Array);
        expect(empty?.length).toBe(0);
        expect([...store.range("memoExpiry")].map((e) => e.key)).toEqual(["0001/m"]);
      }));

    it("returns copies: changing a value read or written later changes nothing stored", () =>
      run(create, async (t) => {
        const store = await t.storage.openShard(0, "node-a");
        const value = bytes("abc");
        await store.write([{ table: "instance", key: "k", value }], []).durable;
        value.fill(0);
        const read = store.get("instance", "k") as Uint8Array;
        expect(text(read)).toBe("abc");
        read.fill(0);
        expect(text(store.get("instance", "k"))).toBe("abc");
        const [entry] = [...store.range("instance")];
        entry?.value.fill(0);
        expect(text(store.get("instance", "k"))).toBe("abc");
      }));

    it("keeps tables and shards apart", () =>
      run(create, async (t) => {
        const stores = await Promise.all([0, 1, 4_000_000_000].map((shard) => t.storage.openShard(shard, "node-a")));
        const writes: WriteResult[] = [];
        for (const store of stores) {
          for (const table of ["instance", "pending", "outbox", "journal"] as const) {
            writes.push(store.write([put(table, "k", `${store.shard}-${table}`), put(table, `${table}-only`, "x")], []));
          }
        }
        await Promise.all(writes.map((w) => w.durable));
        for (const store of stores) {
          for (const table of ["instance", "pending", "outbox", "journal"] as const) {
            expect(text(store.get(table, "k"))).toBe(`${store.shard}-${table}`);
            expect([...store.range(table)].map((e) => e.key)).toEqual(["k", `${table}-only`].sort());
          }
          expect([...store.range("memo")]).toEqual([]);
        }
      }));

    it("ranges in key order, with after, before, prefix and limit, and pages through a table", () =>
      run(create, async (t) => {
        const store = await t.storage.openShard(2, "node-a");
        // Written out of order, in several writes, with keys that order
        // differently as numbers and as strings, and neighbours in other tables.
        const keys = ["b/2", "a/10", "a/1", "a/2", "a", "b/1", "a/", "ab", "b", "a/1/x", "c", "0", "A", "~", "a\u0000"];
        await store.write(
          keys.slice(0, 7).map((k) => put("instance", k, `v:${k}`)),
          [],
        ).durable;
        await store.write(
          keys.slice(7).map((k) => put("instance", k, `v:${k}`)),
          [],
        ).durable;
        await store.write([put("instanceExpiry", "a/0", ""), put("pending", "a/0", "")], []).durable;
        const sorted = [...keys].sort();
        const keysOf = (options?: Parameters<ShardStore["range"]>[1]) => [...store.range("instance", options)].map((e) => e.key);

        expect(keysOf()).toEqual(sorted);
        for (const entry of store.range("instance")) expect(text(entry.value)).toBe(`v:${entry.key}`);
        expect(keysOf({ prefix: "a/" })).toEqual(["a/", "a/1", "a/1/x", "a/10", "a/2"]);
        expect(keysOf({ prefix: "a/1" })).toEqual(["a/1", "a/1/x", "a/10"]);
        expect(keysOf({ prefix: "zz" })).toEqual([]);
        expect(keysOf({ after: "a/1" })).toEqual(sorted.filter((k) => k > "a/1"));
        expect(keysOf({ after: "a" })).toEqual(sorted.filter((k) => k > "a"));
        expect(keysOf({ before: "a/1" })).toEqual(sorted.filter((k) => k < "a/1"));
        expect(keysOf({ after: "a/1", before: "b" })).toEqual(["a/1/x", "a/10", "a/2", "ab"]);
        expect(keysOf({ prefix: "a/", after: "a/1" })).toEqual(["a/1/x", "a/10", "a/2"]);
        expect(keysOf({ prefix: "a/", before: "a/10" })).toEqual(["a/", "a/1", "a/1/x"]);
        expect(keysOf({ prefix: "a/", after: "a/2" })).toEqual([]);
        expect(keysOf({ after: "b", before: "a" })).toEqual([]);
        expect(keysOf({ limit: 3 })).toEqual(sorted.slice(0, 3));
        expect(keysOf({ limit: 0 })).toEqual([]);
        expect(keysOf({ prefix: "a/", limit: 2 })).toEqual(["a/", "a/1"]);

        // Paging: each page starts after the last key of the previous one.
        const paged: string[] = [];
        let after: string | undefined;
        for (;;) {
          const page = keysOf({ limit: 4, ...(after === undefined ? {} : { after }) });
          if (page.length === 0) break;
          paged.push(...page);
          after = page.at(-1);
        }
        expect(paged).toEqual(sorted);
      }));

    it("ranges lazily: a caller can stop early, and a long table pages by limit", () =>
      run(create, async (t) => {
        const store = await t.storage.openShard(0, "node-a");
        const n = 2000;
        const changes = Array.from({ length: n }, (_, i) => put("instance", `t/${String(i).padStart(5, "0")}`, `${i}`));
        await store.write(changes, []).durable;
        const seen: string[] = [];
        for (const entry of store.range("instance")) {
          seen.push(entry.key);
          if (seen.length === 3) break;
        }
        expect(seen).toEqual(["t/00000", "t/00001", "t/00002"]);
        let count = 0;
        let after: string | undefined;
        for (;;) {
          const page = [...store.range("instance", { limit: 300, ...(after === undefined ? {} : { after }) })];
          if (page.length === 0) break;
          count += page.length;
          after = page.at(-1)?.key;
        }
        expect(count).toBe(n);
      }));

    it("gives each write a sequence, increasing per shard and across owners", () =>
      run(create, async (t) => {
        const first = await t.storage.openShard(5, "node-a");
        expect(first.openedAtSequence).toBe(0n);
        const a = first.write([put("instance", "k", "1")], []);
        const b = first.write([put("instance", "k", "2")], []);
        const other = await t.storage.openShard(6, "node-a");
        const c = other.write([put("instance", "k", "1")], []);
        expect(b.sequence).toBeGreaterThan(a.sequence);
        await Promise.all([a.durable, b.durable, c.durable]);
        const d = first.write([put("instance", "k", "3")], []);
        await d.durable;
        expect(d.sequence).toBeGreaterThan(b.sequence);

        const second = await t.storage.openShard(5, "node-b");
        expect(second.epoch).toBeGreaterThan(first.epoch);
        expect(second.openedAtSequence).toBeGreaterThanOrEqual(d.sequence);
        const e = second.write([put("instance", "k", "4")], []);
        expect(e.sequence).toBeGreaterThan(second.openedAtSequence);
        await e.durable;
        expect(text(second.get("instance", "k"))).toBe("4");
      }));

    it("commits the writes of all shards made together in shared groups, durable in order", () =>
      run(create, async (t) => {
        const stores = await Promise.all(Array.from({ length: 8 }, (_, shard) => t.storage.openShard(shard, "node-a")));
        const before = t.storage.stats?.();

        // 64 writes made together: each shard's durable in the order they
        // were made (across shards, the contract promises no order: the
        // cluster backend has one log per shard).
        const order: number[] = [];
        const first = Array.from({ length: 64 }, (_, i) => {
          const result = (stores[i % 8] as ShardStore).write([put("instance", `c${i}`, "x".repeat(100))], []);
          void result.durable.then(() => order.push(i));
          return result;
        });
        await Promise.all(first.map((r) => r.durable));
        for (let shard = 0; shard < 8; shard++) {
          expect(order.filter((i) => i % 8 === shard)).toEqual(Array.from({ length: 8 }, (_, k) => k * 8 + shard));
        }

        // 64 writers, each waiting for its last write before the next.
        await Promise.all(
          Array.from({ length: 64 }, async (_, i) => {
            const store = stores[i % 8] as ShardStore;
            for (let round = 0; round < 5; round++) {
              await store.write([put("instance", `w${i}`, `${round}`), put("journal", `w${i}-${round}`, "j")], []).durable;
            }
          }),
        );
        for (const store of stores) {
          for (let k = 0; k < 8; k++) expect(text(store.get("instance", `w${k * 8 + store.shard}`))).toBe("4");
          expect([...store.range("journal")]).toHaveLength(40);
        }

        const after = t.storage.stats?.();
        if (before !== undefined && after !== undefined) {
          const writes = 64 + 64 * 5;
          expect(after.records - before.records).toBe(writes);
          // Group commit: far fewer durable transactions than writes.
          expect(after.groups - before.groups).toBeLessThan(writes / 4);
          expect(after.bytes - before.bytes).toBeGreaterThan(64 * 100);
        }
      }));

    restartIt?.("keeps everything durable across close and reopen, and close flushes what is pending", () =>
      run(create, async (t) => {
        const zero = await t.storage.openShard(0, "node-a");
        const one = await t.storage.openShard(1, "node-a");
        await zero.write([put("instance", "z1", "a"), put("outbox", "00001", "o")], []).durable;
        const last = one.write([put("instance", "o1", "b")], []);
        // Not awaited: close() completes it.
        const unawaited = zero.write([put("instance", "z2", "c"), del("outbox", "00001")], []);
        const epochs = [zero.epoch, one.epoch];

        const storage = await t.restart();
        await Promise.all([last.durable, unawaited.durable]);
        const zeroAgain = await storage.openShard(0, "node-b");
        const oneAgain = await storage.openShard(1, "node-b");
        expect(zeroAgain.epoch).toBeGreaterThan(epochs[0] as bigint);
        expect(oneAgain.epoch).toBeGreaterThan(epochs[1] as bigint);
        expect(zeroAgain.openedAtSequence).toBeGreaterThanOrEqual(unawaited.sequence);
        expect(oneAgain.openedAtSequence).toBeGreaterThanOrEqual(last.sequence);
        expect([...zeroAgain.range("instance")].map((e) => [e.key, text(e.value)])).toEqual([
          ["z1", "a"],
          ["z2", "c"],
        ]);
        expect([...zeroAgain.range("outbox")]).toEqual([]);
        expect(text(oneAgain.get("instance", "o1"))).toBe("b");
        // Sequences go on after the restart.
        const later = zeroAgain.write([put("instance", "z3", "d")], []);
        expect(later.sequence).toBeGreaterThan(unawaited.sequence);
        await later.durable;

        const storageAgain = await t.restart();
        const zeroThird = await storageAgain.openShard(0, "node-c");
        expect(zeroThird.epoch).toBeGreaterThan(zeroAgain.epoch);
        expect(zeroThird.openedAtSequence).toBeGreaterThanOrEqual(later.sequence);
        expect(text(zeroThird.get("instance", "z3"))).toBe("d");
      }),
    );

    it("fences an older handle: its writes are refused at once, and what it had queued lands whole or not at all", () =>
      run(create, async (t) => {
        const old = await t.storage.openShard(3, "node-a");
        await old.write([put("instance", "f1", "a")], []).durable;
        // Made before the shard is opened again, not durable yet.
        const queued = old.write([put("instance", "f2", "b"), put("instance", "f1", "changed")], []);
        const outcome = queued.durable.then(
          () => "landed" as const,
          (error: unknown) => error,
        );

        const young = await t.storage.openShard(3, "node-b");
        expect(young.epoch).toBeGreaterThan(old.epoch);
        expect(() => old.write([put("instance", "stale", "x")], [])).toThrow(FencedError);
        expect(() => old.write([put("instance", "stale", "x")], [])).toThrow(/fenced/);

        const result = await outcome;
        if (result === "landed") {
          expect(text(young.get("instance", "f2"))).toBe("b");
          expect(text(young.get("instance", "f1"))).toBe("changed");
          expect(young.openedAtSequence).toBeGreaterThanOrEqual(queued.sequence);
        } else {
          expect(result).toBeInstanceOf(FencedError);
          expect(young.get("instance", "f2")).toBeUndefined();
          expect(text(young.get("instance", "f1"))).toBe("a");
        }
        expect(young.get("instance", "stale")).toBeUndefined();

        const next = young.write([put("instance", "f3", "c")], []);
        expect(next.sequence).toBeGreaterThan(queued.sequence);
        await next.durable;
        expect([...young.range("instance")].map((e) => e.key)).toEqual(result === "landed" ? ["f1", "f2", "f3"] : ["f1", "f3"]);
        // The older handle stays fenced once the young one has written.
        expect(() => old.write([put("instance", "stale", "x")], [])).toThrow(FencedError);
      }));

    it("refuses a key longer than maxKeyBytes before anything is written, and stays writable", () =>
      run(create, async (t) => {
        const store = await t.storage.openShard(0, "node-a");
        const longest = "k".repeat(maxKeyBytes);
        // Two bytes a character in UTF-8: the limit is in bytes, not characters.
        const tooLong = "é".repeat(maxKeyBytes / 2 + 1);
        expect(() => store.write([put("instance", "before", "x"), put("instance", tooLong, "x")], [])).toThrow(StorageError);
        expect(() => store.write([put("memo", `${longest}k`, "x")], [])).toThrow(
          new RegExp(`longer than the limit of ${maxKeyBytes} bytes`),
        );
        await store.write([put("instance", longest, "max"), put("instance", "é", "two bytes")], []).durable;
        expect(text(store.get("instance", longest))).toBe("max");
        expect(text(store.get("instance", "é"))).toBe("two bytes");
        expect(store.get("instance", tooLong)).toBeUndefined();
        expect(store.get("instance", "before")).toBeUndefined();
      }));

    it("refuses use after close and bad shard numbers", () =>
      run(create, async (t) => {
        await expect(t.storage.openShard(-1, "node-a")).rejects.toThrow(StorageError);
        await expect(t.storage.openShard(1.5, "node-a")).rejects.toThrow(StorageError);
        await expect(t.storage.openShard(2 ** 32, "node-a")).rejects.toThrow(/not a valid shard number/);
        const store = await t.storage.openShard(0, "node-a");
        const pending = store.write([put("instance", "c1", "x")], []);
        await store.close();
        await pending.durable;
        expect(() => store.write([put("instance", "c2", "x")], [])).toThrow(StorageError);
        expect(() => store.write([put("instance", "c2", "x")], [])).toThrow(/closed/);

        const other = await t.storage.openShard(1, "node-a");
        const reopened = await t.storage.openShard(0, "node-a");
        expect(text(reopened.get("instance", "c1"))).toBe("x");
        const unawaited = other.write([put("instance", "c3", "x")], []);
        await t.storage.close();
        await unawaited.durable;
        await expect(t.storage.openShard(2, "node-a")).rejects.toThrow(StorageError);
        expect(() => other.write([put("instance", "c4", "x")], [])).toThrow(StorageError);
        // Closing twice is harmless.
        await t.storage.close();
      }));
  });
}

/** A backend under test plus restarts. */
interface Harness extends ShardStorageUnderTest {
  /** Closes the current storage and opens it again; the memory backend stays as it is. */
  restart(): Promise<ShardStorage>;
}

/** Runs one test on a fresh backend, then closes every storage it opened and cleans up. */
async function run(create: () => Promise<ShardStorageUnderTest>, test: (t: Harness) => Promise<void>): Promise<void> {
  const made = await create();
  const opened: ShardStorage[] = [made.storage];
  let current = made.storage;
  const harness: Harness = {
    ...made,
    get storage() {
      return current;
    },
    async restart() {
      if (made.reopen === undefined) return current;
      await current.close();
      current = await made.reopen();
      opened.push(current);
      return current;
    },
  };
  try {
    await test(harness);
  } finally {
    try {
      for (const storage of opened) await storage.close();
    } finally {
      await made.cleanup();
    }
  }
}

function bytes(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

function text(value: Uint8Array | undefined): string | undefined {
  return value === undefined ? undefined : new TextDecoder().decode(value);
}

function put(table: ShardTable, key: string, value: string): TableChange {
  return { table, key, value: bytes(value) };
}

function del(table: ShardTable, key: string): TableChange {
  return { table, key, value: undefined };
}
