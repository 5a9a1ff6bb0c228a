import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { type LogRecord, LogRecordSchema, type ShardSnapshot, ShardSnapshotSchema } from "@shoal/sdk/internal";
import {
  type AppendResult,
  encodeRecords,
  FencedError,
  type RecoveredShard,
  type ShardLog,
  type StorageBackend,
  StorageError,
  type StorageStats,
} from "../storage.js";
import { checkShardNumber, checkSnapshot } from "../storage-checks.js";

/**
 * A storage backend that keeps everything in memory, for unit tests: it has
 * the semantics of the durable backends (one sequence for all shards, fencing
 * by epoch, snapshots that drop the records they cover, group commits) and
 * passes the same conformance suite, but loses everything with the process.
 * `durable` resolves on the next turn of the event loop (setImmediate), for
 * all the appends made in this one: like the local backend's group commit, it
 * releases the replies of many invocations together.
 *
 * Records and snapshots are stored as protobuf binary, so what `recover()`
 * returns is a fresh copy, and a message that cannot be serialized fails here
 * as it would with a real backend.
 */
export function createMemoryStorage(): StorageBackend {
  const shards = new Map<number, MemoryShard>();
  const counters = { groups: 0, records: 0, bytes: 0 };
  let lastSequence = 0n;
  let durableSequence = 0n;
  let group: MemoryGroup | undefined;
  let closed = false;

  function shardState(shard: number): MemoryShard {
    let state = shards.get(shard);
    if (state === undefined) {
      state = { epoch: 0n, owner: "", records: [], snapshot: undefined };
      shards.set(shard, state);
    }
    return state;
  }

  function checkOpen(): void {
    if (closed) throw new StorageError("memory storage is closed");
  }

  // All appends made before the next turn of the event loop share one group, as concurrent
  // appends share one fsync in the local backend.
  function append(state: MemoryShard, encoded: readonly Uint8Array[]): AppendResult {
    for (const bytes of encoded) {
      lastSequence += 1n;
      state.records.push({ sequence: lastSequence, bytes });
    }
    if (encoded.length === 0) {
      return { lastSequence, durable: group?.promise ?? Promise.resolve() };
    }
    if (group === undefined) {
      const g: MemoryGroup = { records: 0, bytes: 0, lastSequence, promise: Promise.resolve() };
      g.promise = new Promise<void>((resolve) => {
        setImmediate(() => {
          if (group === g) group = undefined;
          durableSequence = g.lastSequence;
          counters.groups += 1;
          counters.records += g.records;
          counters.bytes += g.bytes;
          resolve();
        });
      });
      group = g;
    }
    group.records += encoded.length;
    for (const bytes of encoded) group.bytes += bytes.length;
    group.lastSequence = lastSequence;
    return { lastSequence, durable: group.promise };
  }

  function openLog(shard: number, state: MemoryShard, epoch: bigint): ShardLog {
    let closedLog = false;
    let lastDurable: Promise<void> = Promise.resolve();

    function checkWritable(): void {
      checkOpen();
      if (state.epoch !== epoch) {
        throw new FencedError(`shard ${shard}: this log (epoch ${epoch}) was fenced by epoch ${state.epoch} of owner ${state.owner}`);
      }
      if (closedLog) throw new StorageError(`shard ${shard}: this log (epoch ${epoch}) is closed`);
    }

    return {
      shard,
      epoch,
      async recover(): Promise<RecoveredShard> {
        await lastDurable;
        const snapshot = state.snapshot;
        return {
          snapshot: snapshot === undefined ? undefined : fromBinary(ShardSnapshotSchema, snapshot.bytes),
          records: state.records
            .filter((r) => snapshot === undefined || r.sequence > snapshot.sequence)
            .map((r) => ({ sequence: r.sequence, record: fromBinary(LogRecordSchema, r.bytes) })),
        };
      },
      append(records: readonly LogRecord[]): AppendResult {
        checkWritable();
        const result = append(state, encodeRecords(records));
        lastDurable = result.durable;
        return result;
      },
      async writeSnapshot(snapshot: ShardSnapshot): Promise<void> {
        checkWritable();
        checkSnapshot(shard, snapshot, durableSequence, state.snapshot?.sequence);
        state.snapshot = { sequence: snapshot.sequence, bytes: toBinary(ShardSnapshotSchema, snapshot) };
        state.records = state.records.filter((r) => r.sequence > snapshot.sequence);
      },
      async close(): Promise<void> {
        closedLog = true;
        await lastDurable;
      },
    };
  }

  return {
    name: "memory",
    async openShard(shard: number, owner: string): Promise<ShardLog> {
      checkOpen();
      checkShardNumber(shard);
      const state = shardState(shard);
      state.epoch += 1n;
      state.owner = owner;
      const fence = create(LogRecordSchema, {
        kind: { case: "fence", value: { owner, epoch: state.epoch } },
        writtenAtMs: BigInt(Date.now()),
      });
      await append(state, [toBinary(LogRecordSchema, fence)]).durable;
      return openLog(shard, state, state.epoch);
    },
    async close(): Promise<void> {
      closed = true;
      await group?.promise;
    },
    stats(): StorageStats {
      return { ...counters };
    },
  };
}

interface MemoryShard {
  /** The highest epoch handed out; handles with a lower one are fenced. */
  epoch: bigint;
  /** The owner that opened `epoch`, for the fencing message. */
  owner: string;
  /** Records after the snapshot, in sequence order. */
  records: { readonly sequence: bigint; readonly bytes: Uint8Array }[];
  snapshot: { readonly sequence: bigint; readonly bytes: Uint8Array } | undefined;
}

interface MemoryGroup {
  promise: Promise<void>;
  records: number;
  bytes: number;
  lastSequence: bigint;
}
