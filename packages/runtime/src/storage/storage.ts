import { toBinary } from "@bufbuild/protobuf";
import { type LogRecord, LogRecordSchema, type ShardSnapshot } from "@shoal/sdk/internal";

/**
 * Where shards keep their logs and snapshots. Every backend (memory, local,
 * nats) implements this one interface and passes one conformance suite
 * (`storage.conformance.ts`).
 */
export interface StorageBackend {
  /** `memory`, `local` or `nats`, for logs and metrics. */
  readonly name: string;
  /**
   * Takes ownership of a shard for `owner` and returns its log. Any log handle
   * opened earlier for the same shard is fenced: its appends and snapshots are
   * refused with `FencedError` from then on.
   */
  openShard(shard: number, owner: string): Promise<ShardLog>;
  /** Flushes what is pending and releases files and connections. */
  close(): Promise<void>;
  /** Counters of durable writes so far, for benchmarks and metrics. */
  stats?(): StorageStats;
}

/** What a backend's durable writes have covered since it was opened. */
export interface StorageStats {
  /** Durable writes (group commits) completed: fsyncs for `local`. */
  readonly groups: number;
  /** Records those writes covered. */
  readonly records: number;
  /** Bytes those writes covered, including the backend's framing. */
  readonly bytes: number;
}

/** A record of a shard's log with its position. */
export interface SequencedRecord {
  /** Strictly increasing within a shard; not necessarily contiguous. */
  readonly sequence: bigint;
  readonly record: LogRecord;
}

/** What a new owner reads to rebuild a shard. */
export interface RecoveredShard {
  /** The latest valid snapshot, if any. */
  readonly snapshot: ShardSnapshot | undefined;
  /**
   * Every record after the snapshot (sequence > snapshot.sequence), in log
   * order. This includes the `fence` records `openShard` writes, the current
   * owner's among them; replay skips them.
   */
  readonly records: readonly SequencedRecord[];
}

/** The result of an append: its position at once, its durability later. */
export interface AppendResult {
  /** The sequence of the last record appended. */
  readonly lastSequence: bigint;
  /**
   * Resolves when the records are durable (fsync'd, or acknowledged by a
   * replicated store); rejects with `StorageError` or `FencedError`. Records of
   * later appends never become durable before these.
   */
  readonly durable: Promise<void>;
}

/** One owner's handle on a shard's log. */
export interface ShardLog {
  readonly shard: number;
  /** Increases each time the shard is opened; a higher epoch fences lower ones. */
  readonly epoch: bigint;
  /** The latest snapshot and every record after it. */
  recover(): Promise<RecoveredShard>;
  /**
   * Appends records in order. Appends are ordered across calls; a backend
   * batches concurrent appends (of all shards) into one durable write: a
   * group commit. Throws `FencedError` at once when fenced.
   *
   * Once a `durable` of this handle rejects, later records may depend on
   * records that were lost, so the handle refuses further appends and
   * snapshots with `StorageError`: open the shard again (a new epoch) and
   * rebuild from `recover()`. A rejected record may still turn up after a
   * crash (the write may have reached the disk): treat it as unknown.
   *
   * A record that cannot be encoded (an int64 field out of range, say) throws
   * `RecordEncodingError` at once; nothing is appended and the handle stays
   * writable: the data is at fault, not the storage.
   */
  append(records: readonly LogRecord[]): AppendResult;
  /**
   * Stores a snapshot covering the log up to `snapshot.sequence` (which must be
   * durable already) and lets the backend drop records at or below it.
   * Rejects with `StorageError` when `snapshot.shard` is another shard, the
   * sequence is not durable yet, or it is below the stored snapshot's.
   */
  writeSnapshot(snapshot: ShardSnapshot): Promise<void>;
  /** Stops using the log; pending appends still complete. */
  close(): Promise<void>;
}

/** A storage operation failed: the message names the file or server and why. */
export class StorageError extends Error {
  override name = "StorageError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A newer owner took the shard: this handle may no longer write. */
export class FencedError extends StorageError {
  override name = "FencedError";
}

/**
 * A record cannot be encoded as protobuf binary (an int64 field out of range,
 * say). Not a `StorageError`: nothing was written and the log is intact; the
 * message that produced the record is at fault.
 */
export class RecordEncodingError extends Error {
  override name = "RecordEncodingError";
}

/** Encodes records for an append, all or none: throws `RecordEncodingError` before anything is written. */
export function encodeRecords(records: readonly LogRecord[]): Uint8Array[] {
  return records.map((record) => {
    try {
      return toBinary(LogRecordSchema, record);
    } catch (err) {
      throw new RecordEncodingError(
        `the ${record.kind.case ?? "log"} record cannot be encoded: ${err instanceof Error ? err.message : String(err)}`,
        {
          cause: err,
        },
      );
    }
  });
}
