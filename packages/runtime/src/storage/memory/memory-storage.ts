import type { LogRecord } from "@shoal/sdk/internal";
import type {
  RangeOptions,
  ShardStorage,
  ShardStore,
  ShardTable,
  StorageStats,
  TableChange,
  TableEntry,
  WriteResult,
} from "../shard-store.js";
import { FencedError, StorageError } from "../storage.js";
import { checkShardNumber, checkTableKey } from "../storage-checks.js";

/**
 * A storage backend that keeps every shard's tables in memory, for unit
 * tests: it has the semantics of the durable backends (fencing by epoch,
 * group commits, writes visible to reads only once committed) and passes the
 * same conformance suite, but loses everything with the process.
 *
 * The writes made in one turn of the event loop form one group: they are
 * committed together on the next turn (setImmediate), and their `durable`
 * resolves then, as the local backend's group commit releases the replies of
 * many invocations together. Until then reads do not see them, as a real
 * store's reads do not see a transaction that has not committed.
 */
export function createMemoryStorage(): ShardStorage {
  const shards = new Map<number, MemoryShard>();
  const counters = { groups: 0, records: 0, bytes: 0 };
  let group: MemoryGroup | undefined;
  let closed = false;

  function shardOf(shard: number): MemoryShard {
    let state = shards.get(shard);
    if (state === undefined) {
      state = { epoch: 0n, owner: "", sequence: 0n, tables: new Map() };
      shards.set(shard, state);
    }
    return state;
  }

  function checkOpen(): void {
    if (closed) throw new StorageError("memory storage is closed");
  }

  function commit(g: MemoryGroup): void {
    if (group === g) group = undefined;
    for (const { state, epoch, changes } of g.writes) {
      // A write queued before a newer owner took the shard is refused, as a
      // real backend refuses it inside its transaction.
      if (state.epoch !== epoch) continue;
      for (const change of changes) {
        let table = state.tables.get(change.table);
        if (table === undefined) {
          table = new Map();
          state.tables.set(change.table, table);
        }
        if (change.value === undefined) table.delete(change.key);
        else table.set(change.key, change.value.slice());
        counters.bytes += change.key.length + (change.value?.length ?? 0);
      }
    }
    counters.groups += 1;
    counters.records += g.writes.length;
  }

  function enqueue(state: MemoryShard, epoch: bigint, changes: readonly TableChange[]): MemoryGroup {
    if (group === undefined) {
      const g: MemoryGroup = { writes: [], committed: Promise.resolve() };
      g.committed = new Promise<void>((resolve) => {
        setImmediate(() => {
          commit(g);
          resolve();
        });
      });
      group = g;
    }
    group.writes.push({ state, epoch, changes });
    return group;
  }

  function openStore(shard: number, state: MemoryShard, epoch: bigint, openedAtSequence: bigint): ShardStore {
    let closedStore = false;
    let broken: Error | undefined;
    let lastDurable: Promise<void> = Promise.resolve();

    function fenced(): FencedError {
      return new FencedError(`shard ${shard}: this store (epoch ${epoch}) was fenced by epoch ${state.epoch} of owner ${state.owner}`);
    }

    return {
      shard,
      epoch,
      openedAtSequence,
      get(table: ShardTable, key: string): Uint8Array | undefined {
        return state.tables.get(table)?.get(key)?.slice();
      },
      *range(table: ShardTable, options: RangeOptions = {}): Iterable<TableEntry> {
        const entries = [...(state.tables.get(table)?.entries() ?? [])]
          .filter(([key]) => inRange(key, options))
          .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
        let n = 0;
        for (const [key, value] of entries) {
          if (options.limit !== undefined && n >= options.limit) return;
          n++;
          yield { key, value: value.slice() };
        }
      },
      write(changes: readonly TableChange[], _records: readonly LogRecord[]): WriteResult {
        checkOpen();
        if (state.epoch !== epoch) throw fenced();
        if (closedStore) throw new StorageError(`shard ${shard}: this store (epoch ${epoch}) is closed`);
        if (broken !== undefined)
          throw new StorageError(`shard ${shard}: an earlier write failed (${broken.message}); open the shard again`);
        for (const change of changes) checkTableKey(shard, change.table, change.key);
        state.sequence += 1n;
        const g = enqueue(state, epoch, changes);
        const durable = g.committed.then(() => {
          if (state.epoch !== epoch) {
            broken = fenced();
            throw broken;
          }
        });
        durable.catch(() => {});
        lastDurable = durable;
        return { sequence: state.sequence, durable };
      },
      async close(): Promise<void> {
        closedStore = true;
        await lastDurable.catch(() => {});
      },
    };
  }

  return {
    name: "memory",
    async openShard(shard: number, owner: string): Promise<ShardStore> {
      checkOpen();
      checkShardNumber(shard);
      const state = shardOf(shard);
      // What earlier owners queued is committed (or refused) before the new owner reads.
      await group?.committed;
      state.epoch += 1n;
      state.owner = owner;
      return openStore(shard, state, state.epoch, state.sequence);
    },
    async close(): Promise<void> {
      closed = true;
      await group?.committed;
    },
    stats(): StorageStats {
      return { ...counters };
    },
  };
}

function inRange(key: string, options: RangeOptions): boolean {
  if (options.after !== undefined && key <= options.after) return false;
  if (options.before !== undefined && key >= options.before) return false;
  if (options.prefix !== undefined && !key.startsWith(options.prefix)) return false;
  return true;
}

interface MemoryShard {
  /** The highest epoch handed out; handles with a lower one are fenced. */
  epoch: bigint;
  /** The owner that opened `epoch`, for the fencing message. */
  owner: string;
  /** Writes made so far, across owners. */
  sequence: bigint;
  tables: Map<ShardTable, Map<string, Uint8Array>>;
}

interface MemoryGroup {
  writes: { state: MemoryShard; epoch: bigint; changes: readonly TableChange[] }[];
  committed: Promise<void>;
}
