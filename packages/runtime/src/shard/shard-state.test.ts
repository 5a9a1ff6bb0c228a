// The shard's view over its store: what a record writes to the tables, what a
// reopened view reads back, what is read on demand, and that a record that
// cannot be encoded changes nothing.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type CommitSchema,
  type Envelope,
  EnvelopeSchema,
  JournalSchema,
  type LogRecord,
  LogRecordSchema,
  MemoSchema,
  okReply,
} from "@shoal/sdk/internal";
import { afterEach, describe, expect, it } from "vitest";
import { createMemoryStorage } from "../storage/memory/memory-storage.js";
import type { ShardStorage, ShardStore, ShardTable } from "../storage/shard-store.js";
import { put } from "../storage/shard-tables.js";
import { RecordEncodingError } from "../storage/storage.js";
import { createInstanceCache, type InstanceCache } from "./instance-cache.js";
import { deadLetterRetention, ShardState } from "./shard-state.js";

const storages: ShardStorage[] = [];
afterEach(async () => {
  for (const s of storages.splice(0)) await s.close();
});

/** A store whose `get`s are counted per table. */
function counting(store: ShardStore): ShardStore & { gets: Record<string, number> } {
  const gets: Record<string, number> = {};
  return Object.assign(Object.create(store) as ShardStore, {
    gets,
    get(table: ShardTable, key: string) {
      gets[table] = (gets[table] ?? 0) + 1;
      return store.get(table, key);
    },
  });
}

async function opened(options: { cacheSize?: number; idleMs?: number; now?: () => number } = {}) {
  const storage = createMemoryStorage();
  storages.push(storage);
  const cache = createInstanceCache({ size: options.cacheSize ?? 100, idleMs: options.idleMs ?? 60_000, now: options.now ?? Date.now });
  const store = counting(await storage.openShard(0, "node-1"));
  return { storage, cache, store, state: ShardState.open(store, cache) };
}

/** Reopens the shard as a new owner would, with a fresh cache. */
async function reopen(storage: ShardStorage, cache?: InstanceCache) {
  const store = counting(await storage.openShard(0, "node-2"));
  return { store, state: ShardState.open(store, cache ?? createInstanceCache({ size: 100, idleMs: 60_000, now: Date.now })) };
}

/** Envelope fields as `create` takes them: plain objects, not a message (whose $typeName would make `create` return the spread as is). */
type EnvelopeFields = Exclude<MessageInitShape<typeof EnvelopeSchema>, Envelope>;
const envelope = (id: string, fields: EnvelopeFields = {}) =>
  create(EnvelopeSchema, { id, target: { type: "t.v1.T", key: "k" }, handler: "H", ...fields });
const input = (e: Envelope): LogRecord => create(LogRecordSchema, { kind: { case: "input", value: { envelope: e } } });
const commit = (c: MessageInitShape<typeof CommitSchema>): LogRecord => create(LogRecordSchema, { kind: { case: "commit", value: c } });
const write = (key: string, state: number, expiresAtMs = 0n) => ({
  address: { type: "t.v1.T", key },
  state: new Uint8Array([state]),
  expiresAtMs,
});
const durable = (state: ShardState, records: LogRecord[]) => state.write(records).durable;

describe("ShardState", () => {
  it("reads back what it wrote when the shard is opened again: pending in acceptance order, outbox, egress, dead letters, watermarks, instances, memos, journals", async () => {
    const { storage, state } = await opened();
    await durable(state, [input(envelope("b"))]);
    await durable(state, [input(envelope("a"))]);
    await durable(state, [input(envelope("c", { source: { shard: 3, sequence: 9n } }))]);
    await durable(state, [
      create(LogRecordSchema, {
        kind: {
          case: "callResult",
          value: {
            invocationId: "inv",
            result: { callId: "inv/0", reply: okReply(new Uint8Array([1])) },
            source: { shard: 4, sequence: 2n },
          },
        },
      }),
    ]);
    await durable(state, [
      commit({
        consumed: ["b"],
        stateWrites: [write("k", 1), write("gone", 2)],
        outbox: [{ sequence: 1n, envelope: envelope("out-1") }],
        egress: [{ id: "eg-1", egress: "stdout" }],
        memos: [{ id: "memo-1", expiresAtMs: 5_000n }],
        deadLetters: [{ envelopeId: "dead-1" }],
      }),
    ]);
    await durable(state, [commit({ stateWrites: [{ address: { type: "t.v1.T", key: "gone" }, clear: true }] })]);

    const { state: again } = await reopen(storage);
    expect([...again.pending.keys()]).toEqual(["a", "c"]);
    expect([...again.outbox.keys()]).toEqual([1n]);
    expect(again.nextOutboxSequence).toBe(2n);
    expect([...again.egress.keys()]).toEqual(["eg-1"]);
    expect([...again.deadLetters.keys()]).toEqual(["dead-1"]);
    expect(again.watermarks).toEqual(
      new Map([
        [3, 9n],
        [4, 2n],
      ]),
    );
    expect(again.instance("t.v1.T", "k")?.state).toEqual(new Uint8Array([1]));
    expect(again.instance("t.v1.T", "gone")).toBeUndefined();
    expect(again.memo("memo-1")?.expiresAtMs).toBe(5_000n);
    expect(again.journal("inv")?.map((r) => r.callId)).toEqual(["inv/0"]);
    expect(again.counts).toEqual({ instances: 1n, memos: 1n, journals: 1n });
    expect(again.isDuplicate(envelope("dup", { source: { shard: 3, sequence: 9n } }))).toBe(true);
  });

  it("sees its writes before they are durable, and the store's once they are (instances then come from the cache)", async () => {
    const { state, store, cache } = await opened();
    const written = state.write([commit({ stateWrites: [write("k", 7)] })]);
    // Not committed yet: the store has nothing, the view has the write.
    expect(store.get("instance", "t.v1.T/k")).toBeUndefined();
    expect(state.instance("t.v1.T", "k")?.state).toEqual(new Uint8Array([7]));
    await written.durable;
    expect(cache.get(0, "t.v1.T/k")?.state).toEqual(new Uint8Array([7]));
    const gets = store.gets.instance ?? 0;
    expect(state.instance("t.v1.T", "k")?.state).toEqual(new Uint8Array([7]));
    expect(store.gets.instance ?? 0).toBe(gets);
  });

  it("refuses a record that cannot be encoded before it changes the view or writes anything", async () => {
    const { state, storage } = await opened();
    await durable(state, [input(envelope("m"))]);
    const sequence = state.sequence;
    const tooLate = 2n ** 64n;
    const poison = commit({
      consumed: ["m"],
      stateWrites: [write("k", 1)],
      outbox: [{ sequence: 1n, envelope: envelope("x", { deliverAtMs: tooLate }) }],
    });
    expect(() => state.write([poison])).toThrow(RecordEncodingError);
    expect([...state.pending.keys()]).toEqual(["m"]);
    expect(state.instance("t.v1.T", "k")).toBeUndefined();
    expect(state.outbox.size).toBe(0);
    expect(state.sequence).toBe(sequence);
    // The store took nothing: a new owner sees the message still pending.
    await durable(state, [input(envelope("n"))]);
    const { state: again } = await reopen(storage);
    expect([...again.pending.keys()]).toEqual(["m", "n"]);
    expect(again.instance("t.v1.T", "k")).toBeUndefined();
  });

  it("keeps the most recent dead letters only, in the store too", async () => {
    const { state, storage } = await opened();
    const letters = Array.from({ length: deadLetterRetention + 2 }, (_, i) => ({ envelopeId: `d${i}` }));
    await durable(state, [commit({ deadLetters: letters.slice(0, 3) })]);
    await durable(state, [commit({ deadLetters: letters.slice(3) })]);
    const { state: again } = await reopen(storage);
    expect(again.deadLetters.size).toBe(deadLetterRetention);
    expect([...again.deadLetters.keys()][0]).toBe("d2");
  });

  it("deletes expired memos and their index entries from the store", async () => {
    const { state, storage, store } = await opened();
    await durable(state, [
      commit({
        memos: [
          { id: "early", expiresAtMs: 1_000n },
          { id: "late", expiresAtMs: 9_000n },
        ],
      }),
    ]);
    expect(state.expireMemos(1_000, 100)).toBeUndefined();
    await state.expireMemos(1_001, 100)?.durable;
    expect(state.memo("early")).toBeUndefined();
    expect([...store.range("memo")].map((e) => e.key)).toEqual(["late"]);
    expect([...store.range("memoExpiry")].map((e) => e.key)).toHaveLength(1);
    const { state: again } = await reopen(storage);
    expect(again.memo("early")).toBeUndefined();
    expect(again.memo("late")).toBeDefined();
    expect(again.counts.memos).toBe(1n);
  });

  it("pages through a type's instances in key order, with writes not yet durable merged in", async () => {
    const { state } = await opened();
    await durable(state, [commit({ stateWrites: ["a", "c", "e", "g"].map((k, i) => write(k, i)) })]);
    state.write([
      commit({ stateWrites: [write("b", 9), write("d", 9), { address: { type: "t.v1.T", key: "e" }, clear: true }, write("h", 9)] }),
    ]);
    const keys: string[][] = [];
    let after: string | undefined;
    do {
      const page = state.listInstances("t.v1.T", { after, limit: 2 });
      keys.push(page.instances.map((i) => i.key));
      after = page.next;
    } while (after !== undefined);
    expect(keys).toEqual([
      ["a", "b"],
      ["c", "d"],
      ["g", "h"],
    ]);
    expect(state.listInstances("other.v1.T", { limit: 10 })).toEqual({ instances: [] });
  });

  it("keeps one expiry index entry per instance with a TTL, moved by each write and gone with the state", async () => {
    const { state, store } = await opened();
    await durable(state, [commit({ stateWrites: [write("k", 1, 5_000n), write("never", 2)] })]);
    expect([...state.expiringBetween(undefined, 6_000)]).toEqual([{ type: "t.v1.T", key: "k", atMs: 5_000 }]);
    await durable(state, [commit({ stateWrites: [write("k", 3, 9_000n)] })]);
    expect([...state.expiringBetween(undefined, 6_000)]).toEqual([]);
    expect([...state.expiringBetween(6_000, 9_000)]).toEqual([{ type: "t.v1.T", key: "k", atMs: 9_000 }]);
    await durable(state, [commit({ stateWrites: [{ address: { type: "t.v1.T", key: "k" }, clear: true }] })]);
    expect([...store.range("instanceExpiry")]).toEqual([]);
    expect(state.counts.instances).toBe(1n);
  });

  it("reads memos and journals from a store written without the counts (a converted one), and counts from there", async () => {
    const { storage } = await opened();
    const writer = await storage.openShard(0, "converter");
    await writer.write(
      [
        put("memo", "m", create(MemoSchema, { id: "m", expiresAtMs: 9_000n })),
        put("journal", "j", create(JournalSchema, { invocationId: "j" })),
      ],
      [],
    ).durable;
    const { state } = await reopen(storage);
    expect(state.memo("m")?.id).toBe("m");
    expect(state.journal("j")).toEqual([]);
    // The counts start from what is written from here on.
    await durable(state, [commit({ memos: [{ id: "n" }] })]);
    expect(state.counts.memos).toBe(1n);
  });

  describe("passivation", () => {
    it("drops the least recently used instance beyond the cache size, and reads it back from the store on its next use", async () => {
      const { state, store } = await opened({ cacheSize: 2 });
      await durable(state, [commit({ stateWrites: [write("a", 1), write("b", 2), write("c", 3)] })]);
      // Settled into a cache of two: "a" was dropped. (The write itself looked each instance up, and missed.)
      const before = store.gets.instance ?? 0;
      const gets = () => (store.gets.instance ?? 0) - before;
      expect(state.instance("t.v1.T", "c")?.state).toEqual(new Uint8Array([3]));
      expect(gets()).toBe(0);
      expect(state.instance("t.v1.T", "a")?.state).toEqual(new Uint8Array([1]));
      expect(gets()).toBe(1);
      // Reading "a" back dropped "b", the least recently used now.
      expect(state.instance("t.v1.T", "b")?.state).toEqual(new Uint8Array([2]));
      expect(gets()).toBe(2);
    });

    it("drops an instance idle for instanceIdleMs, never one whose write is not durable yet nor one whose mailbox is busy", async () => {
      let now = 1_000;
      const { state, store, cache } = await opened({ idleMs: 100, now: () => now });
      await durable(state, [commit({ stateWrites: [write("idle", 1), write("busy", 2)] })]);
      cache.attach(0, (key) => key === "t.v1.T/busy");
      const written = state.write([commit({ stateWrites: [write("writing", 3)] })]);
      now += 100;
      cache.sweep();
      const before = store.gets.instance ?? 0;
      const gets = () => (store.gets.instance ?? 0) - before;
      expect(state.instance("t.v1.T", "busy")?.state).toEqual(new Uint8Array([2]));
      expect(state.instance("t.v1.T", "writing")?.state).toEqual(new Uint8Array([3]));
      expect(gets()).toBe(0);
      expect(state.instance("t.v1.T", "idle")?.state).toEqual(new Uint8Array([1]));
      expect(gets()).toBe(1);
      await written.durable;
    });

    it("never drops an instance whose write is not durable yet, whatever the cache size", async () => {
      const { state, store } = await opened({ cacheSize: 1 });
      const written = state.write([commit({ stateWrites: [write("a", 1)] })]);
      const second = state.write([commit({ stateWrites: [write("b", 2), write("c", 3)] })]);
      const before = store.gets.instance ?? 0;
      // Three instances in a cache of one: "a", not durable yet, is read from the overlay, never from the store.
      for (const key of ["b", "c", "a"]) state.instance("t.v1.T", key);
      expect(state.instance("t.v1.T", "a")?.state).toEqual(new Uint8Array([1]));
      expect((store.gets.instance ?? 0) - before).toBe(0);
      await written.durable;
      await second.durable;
    });
  });
});
