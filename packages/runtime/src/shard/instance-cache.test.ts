import { describe, expect, it } from "vitest";
import { createInstanceCache, type InstanceRecord } from "./instance-cache.js";

function record(key: string, version: number): InstanceRecord {
  return { type: "t.v1.T", key, state: new Uint8Array([version]), expiresAtMs: 0 };
}

/** The cache's rules written as plainly as possible: a list in order of use, least recent first. */
function model(size: number, idleMs: number) {
  let list: { shard: number; key: string; record: InstanceRecord; usedAtMs: number }[] = [];
  const busy = new Map<number, (key: string) => boolean>();
  const pinned = (e: { shard: number; key: string }) => busy.get(e.shard)?.(e.key) ?? false;
  const find = (shard: number, key: string) => list.findIndex((e) => e.shard === shard && e.key === key);
  function evict(over: (e: { usedAtMs: number }) => boolean) {
    for (const e of [...list]) {
      if (!over(e)) return;
      if (!pinned(e)) list = list.filter((x) => x !== e);
    }
  }
  return {
    get(shard: number, key: string, now: number) {
      const i = find(shard, key);
      if (i < 0) return undefined;
      const [e] = list.splice(i, 1);
      if (e === undefined) return undefined;
      e.usedAtMs = now;
      list.push(e);
      return e.record;
    },
    set(shard: number, key: string, r: InstanceRecord, now: number) {
      const i = find(shard, key);
      if (i >= 0) list.splice(i, 1);
      list.push({ shard, key, record: r, usedAtMs: now });
      evict(() => list.length > size);
    },
    delete(shard: number, key: string) {
      const i = find(shard, key);
      if (i >= 0) list.splice(i, 1);
    },
    attach(shard: number, isBusy: ((key: string) => boolean) | undefined) {
      if (isBusy !== undefined) busy.set(shard, isBusy);
      else {
        busy.delete(shard);
        list = list.filter((e) => e.shard !== shard);
      }
    },
    sweep(now: number) {
      evict((e) => e.usedAtMs <= now - idleMs);
    },
    get size() {
      return list.length;
    },
  };
}

describe("the instance cache", () => {
  it("drops the least recently used first, counting a hit as a use", () => {
    let now = 0;
    const cache = createInstanceCache({ size: 2, idleMs: 1_000, now: () => now });
    cache.set(0, "a", record("a", 1));
    cache.set(0, "b", record("b", 1));
    now = 1;
    expect(cache.get(0, "a")?.key).toBe("a");
    cache.set(0, "c", record("c", 1));
    expect(cache.get(0, "b")).toBeUndefined();
    expect(cache.get(0, "a")?.key).toBe("a");
    expect(cache.get(0, "c")?.key).toBe("c");
  });

  it("keeps the same rules as a plain list under thousands of random operations", () => {
    // A small deterministic generator (mulberry32), so a failure repeats.
    let seed = 12345;
    const random = (n: number) => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
    };
    let hits = 0;
    let now = 0;
    const cache = createInstanceCache({ size: 5, idleMs: 50, now: () => now });
    const reference = model(5, 50);
    const busyKeys = new Set<string>();
    for (let step = 0; step < 20_000; step++) {
      now += random(5);
      const shard = random(3);
      const key = `k${random(9)}`;
      const op = random(100);
      if (op < 40) {
        const got = cache.get(shard, key);
        expect(got, `step ${step}: get ${shard} ${key}`).toEqual(reference.get(shard, key, now));
        if (got !== undefined) hits++;
      } else if (op < 75) {
        const r = record(key, step % 256);
        cache.set(shard, key, r);
        reference.set(shard, key, r, now);
      } else if (op < 85) {
        cache.delete(shard, key);
        reference.delete(shard, key);
      } else if (op < 92) {
        cache.sweep();
        reference.sweep(now);
      } else if (op < 97) {
        if (random(2) === 0) busyKeys.add(key);
        else busyKeys.delete(key);
        const isBusy = (k: string) => busyKeys.has(k);
        cache.attach(shard, isBusy);
        reference.attach(shard, isBusy);
      } else {
        cache.attach(shard, undefined);
        reference.attach(shard, undefined);
      }
      expect(cache.size, `step ${step}: size`).toBe(reference.size);
    }
    // Hits and misses both: the order of use decided something.
    expect(hits).toBeGreaterThan(500);
  });
});
