import { toBinary } from "@bufbuild/protobuf";
import { type LogRecord, LogRecordSchema } from "@shoal/sdk/internal";

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

/**
 * A message taken from a shard's inputs is refused for good (it names another
 * shard, say): the consumer reports it and drops it, and goes on.
 */
export class InvalidInputError extends Error {
  override name = "InvalidInputError";
}

/** Encodes log records (for a backend that replicates the log, `nats`), all or none: throws `RecordEncodingError` before anything is written. */
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
