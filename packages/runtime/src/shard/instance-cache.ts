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
  /** The map's key of the entry. */
  readonly id: string;
  record: InstanceRecord;
  usedAtMs: number;
  /** The entry used just before this one, and just after: the list runs from the least recently used. */
  older: Entry | undefined;
  newer: Entry | undefined;
}

/** Creates a node's instance cache. `now` is the node's clock. */
export function createInstanceCache(options: { size: number; idleMs: number; now: () => number }): InstanceCache {
  // A Map to find an entry, and a list through the entries in order of use.
  // Moving an entry to the list's end on each use costs a few pointers; doing
  // that with the Map's own order (delete, then set) cost several
  // microseconds a request under load, most of it the Map's upkeep.
  const entries = new Map<string, Entry>();
  let oldest: Entry | undefined;
  let newest: Entry | undefined;
  const busy = new Map<number, (key: string) => boolean>();
  const id = (shard: number, key: string) => `${shard}:${key}`;
  const pinned = (e: Entry) => busy.get(e.shard)?.(e.key) ?? false;

  function unlink(e: Entry): void {
    if (e.older === undefined) oldest = e.newer;
    else e.older.newer = e.newer;
    if (e.newer === undefined) newest = e.older;
    else e.newer.older = e.older;
    e.older = undefined;
    e.newer = undefined;
  }

  function append(e: Entry): void {
    e.older = newest;
    if (newest === undefined) oldest = e;
    else newest.newer = e;
    newest = e;
  }

  /** Marks an entry used now: the newest of the list. */
  function use(e: Entry): void {
    e.usedAtMs = options.now();
    if (e === newest) return;
    unlink(e);
    append(e);
  }

  function drop(e: Entry): void {
    entries.delete(e.id);
    unlink(e);
  }

  /** Drops unpinned entries, least recently used first, while `over` holds. */
  function evict(over: (e: Entry) => boolean) {
    for (let e = oldest; e !== undefined && over(e); ) {
      const next = e.newer;
      if (!pinned(e)) drop(e);
      e = next;
    }
  }

  return {
    get(shard, key) {
      const e = entries.get(id(shard, key));
      if (e === undefined) return undefined;
      use(e);
      return e.record;
    },
    set(shard, key, record) {
      const k = id(shard, key);
      const e = entries.get(k);
      if (e === undefined) {
        const entry: Entry = { shard, key, id: k, record, usedAtMs: options.now(), older: undefined, newer: undefined };
        entries.set(k, entry);
        append(entry);
      } else {
        e.record = record;
        use(e);
      }
      if (entries.size > options.size) evict(() => entries.size > options.size);
    },
    delete(shard, key) {
      const e = entries.get(id(shard, key));
      if (e !== undefined) drop(e);
    },
    attach(shard, isBusy) {
      if (isBusy !== undefined) {
        busy.set(shard, isBusy);
        return;
      }
      busy.delete(shard);
      for (let e = oldest; e !== undefined; ) {
        const next = e.newer;
        if (e.shard === shard) drop(e);
        e = next;
      }
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
