import type { LogRecord } from "@shoal/sdk/internal";
import type { ConnectionHealth } from "../observe/health.js";

/**
 * The tables a shard's durable state consists of. Each is an ordered map from
 * string keys to bytes; `shard-tables.ts` says what the keys and values of
 * each one are. A backend stores bytes and knows nothing of their meaning.
 *
 * - Tables the shard holds whole in memory while it runs (read once, at open):
 *   `pending`, `outbox`, `egress`, `deadLetter`, `watermark`, `meta`.
 * - Tables it reads one key at a time, on demand, and never holds whole:
 *   `instance`, `instanceExpiry`, `memo`, `memoExpiry`, `journal`.
 */
export type ShardTable =
  | "instance"
  | "instanceExpiry"
  | "pending"
  | "outbox"
  | "memo"
  | "memoExpiry"
  | "journal"
  | "egress"
  | "deadLetter"
  | "watermark"
  | "meta";

/** Every table, in a fixed order (for dumps, snapshots and the conformance suite). */
export const shardTables: readonly ShardTable[] = [
  "instance",
  "instanceExpiry",
  "pending",
  "outbox",
  "memo",
  "memoExpiry",
  "journal",
  "egress",
  "deadLetter",
  "watermark",
  "meta",
];

/**
 * The longest table key every backend holds, in UTF-8 bytes. A write with a
 * longer key is refused with `StorageError`; instance keys are checked
 * against it (`instanceKeyTooLong`) before a message with one is accepted. (LMDB's limit with 4 KiB pages is 1978 bytes,
 * of which the local backend uses 5 for the shard and table.)
 */
export const maxKeyBytes = 1024;

/** One write to a table: `value` undefined deletes the key. */
export interface TableChange {
  readonly table: ShardTable;
  readonly key: string;
  readonly value: Uint8Array | undefined;
}

/** A table entry as read back. */
export interface TableEntry {
  readonly key: string;
  readonly value: Uint8Array;
}

/** Which entries of a table `range` returns, in key order. */
export interface RangeOptions {
  /** Only keys strictly greater than this. */
  readonly after?: string;
  /** Only keys that start with this. */
  readonly prefix?: string;
  /** Only keys strictly less than this. */
  readonly before?: string;
  /** At most this many entries. */
  readonly limit?: number;
}

/** What one `write` covers, at once and later. */
export interface WriteResult {
  /**
   * The shard's sequence after this write: increasing per shard, across
   * owners. Writes a backend groups into one log message (`nats`: those made
   * while the shard's previous message is in flight) share its sequence; a
   * write made after an earlier one's `durable` resolved has a higher one.
   */
  readonly sequence: bigint;
  /**
   * Resolves when the write is durable: on disk (flushed, not only
   * committed) for `local`, acknowledged by the replicated log for `nats`.
   * Rejects with `StorageError` or `FencedError`. A later write never becomes
   * durable before an earlier one of the same shard.
   */
  readonly durable: Promise<void>;
}

/**
 * Where a node keeps its shards' state. Every backend (memory, local, nats)
 * implements this one interface and passes one conformance suite
 * (`shard-storage.conformance.ts`).
 */
export interface ShardStorage {
  /** `memory`, `local` or `nats`, for logs and metrics. */
  readonly name: string;
  /**
   * Takes ownership of a shard for `owner` and returns its store. Any handle
   * opened earlier for the same shard is fenced: its writes are refused with
   * `FencedError` from then on, and its pending writes fail with it.
   */
  openShard(shard: number, owner: string): Promise<ShardStore>;
  /** Flushes what is pending and releases files and connections. */
  close(): Promise<void>;
  /** Counters of durable writes so far, for benchmarks and metrics. */
  stats?(): StorageStats;
  /**
   * The backend's connection to its servers (the `nats` backend's NATS
   * connection), for `/healthz` and the metrics; absent for backends
   * without one.
   */
  connection?(): ConnectionHealth;
  /** Per-shard appends to the replicated log (the `nats` backend's WALs), for the metrics; absent for backends without one. */
  appendStats?(): readonly ShardAppendStats[];
  /**
   * Copies the store, as of its last committed transaction, into `directory`
   * (created if missing; it must be empty) while the shards keep writing: a
   * node started on the copy has every shard's state as of that moment.
   * Resolves with the directory (absolute) and the bytes copied; rejects
   * with `StorageError`. Backends without it (memory, and the cluster's,
   * whose state is its replicated log) cannot be copied online.
   */
  backup?(directory: string): Promise<{ directory: string; bytes: number }>;
}

/** Appends of one shard's log messages on this node since the storage opened. */
export interface ShardAppendStats {
  readonly shard: number;
  /** Messages acknowledged. */
  readonly appends: number;
  /** Messages refused or lost (fenced, timed out, connection lost). */
  readonly errors: number;
  /** Time from the first write into a message to its acknowledgement (queueing behind the message in flight included), summed over the acknowledged messages, in seconds. */
  readonly seconds: number;
  /** The last log sequence applied to the node's local store, while the shard is open here. */
  readonly applied?: bigint;
}

/** What a backend's durable writes have covered since it was opened. */
export interface StorageStats {
  /** Durable writes (group commits) completed: one transaction flushed to disk for `local`. */
  readonly groups: number;
  /** `write` calls those covered. */
  readonly records: number;
  /** Bytes of keys and values those covered. */
  readonly bytes: number;
}

/**
 * One owner's handle on a shard's tables.
 *
 * Reads (`get`, `range`) see what earlier writes of this shard left once
 * they are committed; a write not yet committed may or may not be visible.
 * The shard keeps what it wrote and has not seen durable yet in memory
 * (`ShardState`), so it never depends on which.
 */
export interface ShardStore {
  readonly shard: number;
  /** Increases each time the shard is opened; a higher epoch fences lower ones. */
  readonly epoch: bigint;
  /** The shard's sequence when it was opened (0 for a shard never written). */
  readonly openedAtSequence: bigint;
  /** A value, read synchronously (local: from the memory map, in microseconds). */
  get(table: ShardTable, key: string): Uint8Array | undefined;
  /** A table's entries in key order; lazily, so a caller can stop early. */
  range(table: ShardTable, options?: RangeOptions): Iterable<TableEntry>;
  /**
   * Writes changes, in order, after every earlier write of this handle. A
   * backend batches the writes of all shards made close together into one
   * durable transaction: a group commit.
   *
   * `records` are the log records the changes come from. A backend that
   * replicates a log (`nats`) appends them and materializes the changes
   * locally; one whose tables are durable on their own (`local`) may ignore
   * them.
   *
   * Throws `FencedError` at once when fenced. Once a `durable` of this handle
   * rejects, later changes may depend on changes that were lost, so the
   * handle refuses further writes with `StorageError`: open the shard again
   * (a new epoch) and reload. A rejected write may still turn up after a
   * crash: treat it as unknown.
   */
  write(changes: readonly TableChange[], records: readonly LogRecord[]): WriteResult;
  /** Stops using the shard; pending writes still complete. */
  close(): Promise<void>;
}
