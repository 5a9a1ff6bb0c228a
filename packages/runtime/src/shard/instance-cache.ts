/** One instance's committed state. */
export interface InstanceRecord {
  readonly type: string;
  readonly key: string;
  readonly state: Uint8Array;
  /** 0: never expires. */
  readonly expiresAtMs: number;
}

/**
 * The decoded instances a node holds in memory (passivation): the most
 * recently used ones, up to `size`, each for at most `idleMs` after its last
 * use. An instance dropped from it is read back from its shard's store on
 * its next message. It holds only clean instances: one whose write is not
 * durable yet stays in its shard's overlay (`ShardState`) until it is, so
 * dropping an entry never loses a write.
 */
export interface InstanceCache {
  /** The cached record of an instance (`key`: the instance table's key), marking it used now. */
  get(shard: number, key: string): InstanceRecord | undefined;
  /** Caches a clean record, dropping the least recently used instances beyond `size`. */
  set(shard: number, key: string, record: InstanceRecord): void;
  /** Forgets an instance (a write to it is pending, or it was cleared). */
  delete(shard: number, key: string): void;
  /** Says which of a shard's instances must stay (their mailbox is busy); `undefined` forgets the shard and its entries. */
  attach(shard: number, busy: ((key: string) => boolean) | undefined): void;
  /** Drops the instances idle for `idleMs` or more. */
  sweep(): void;
  /** Instances held now. */
  readonly size: number;
}

interface Entry {
  readonly shard: number;
  readonly key: string;
  readonly record: InstanceRecord;
  usedAtMs: number;
}

/** Creates a node's instance cache. `now` is the node's clock. */
export function createInstanceCache(options: { size: number; idleMs: number; now: () => number }): InstanceCache {
  // A Map iterates in insertion order: re-inserting on use keeps it least recently used first.
  const entries = new Map<string, Entry>();
  const busy = new Map<number, (key: string) => boolean>();
  const id = (shard: number, key: string) => `${shard}:${key}`;
  const pinned = (e: Entry) => busy.get(e.shard)?.(e.key) ?? false;

  /** Drops unpinned entries, least recently used first, while `over` holds. */
  function evict(over: (e: Entry) => boolean) {
    for (const [k, e] of entries) {
      if (!over(e)) return;
      if (!pinned(e)) entries.delete(k);
    }
  }

  return {
    get(shard, key) {
      const k = id(shard, key);
      const e = entries.get(k);
      if (e === undefined) return undefined;
      entries.delete(k);
      e.usedAtMs = options.now();
      entries.set(k, e);
      return e.record;
    },
    set(shard, key, record) {
      const k = id(shard, key);
      entries.delete(k);
      entries.set(k, { shard, key, record, usedAtMs: options.now() });
      if (entries.size > options.size) evict(() => entries.size > options.size);
    },
    delete(shard, key) {
      entries.delete(id(shard, key));
    },
    attach(shard, isBusy) {
      if (isBusy !== undefined) {
        busy.set(shard, isBusy);
        return;
      }
      busy.delete(shard);
      for (const [k, e] of entries) if (e.shard === shard) entries.delete(k);
    },
    sweep() {
      const before = options.now() - options.idleMs;
      evict((e) => e.usedAtMs <= before);
    },
    get size() {
      return entries.size;
    },
  };
}
