// Argument checks shared by the storage backends, so every backend refuses
// the same mistakes with the same messages (the conformance suite relies on it).
import type { ShardSnapshot } from "@shoal/sdk/internal";
import { StorageError } from "./storage.js";

/** Throws unless `shard` fits the log's u32 shard field. */
export function checkShardNumber(shard: number): void {
  if (!Number.isInteger(shard) || shard < 0 || shard > 0xffff_ffff) {
    throw new StorageError(`shard ${String(shard)} is not a valid shard number: use an integer from 0 to 4294967295`);
  }
}

/**
 * Throws unless `snapshot` may replace the stored one of `shard`: it must be
 * for that shard, cover only durable records (`durableSequence` is the highest
 * durable sequence of the store) and not go back before the stored snapshot.
 */
export function checkSnapshot(shard: number, snapshot: ShardSnapshot, durableSequence: bigint, storedSequence: bigint | undefined): void {
  if (snapshot.shard !== shard) {
    throw new StorageError(`shard ${shard}: cannot store a snapshot of shard ${snapshot.shard}; write it through that shard's log`);
  }
  if (snapshot.sequence > durableSequence) {
    throw new StorageError(
      `shard ${shard}: snapshot at sequence ${snapshot.sequence} covers records that are not durable yet (last durable sequence ${durableSequence}); await the appends' durable first`,
    );
  }
  if (storedSequence !== undefined && snapshot.sequence < storedSequence) {
    throw new StorageError(
      `shard ${shard}: snapshot at sequence ${snapshot.sequence} is older than the stored snapshot at ${storedSequence}`,
    );
  }
}
