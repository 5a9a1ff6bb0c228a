// Argument checks shared by the storage backends, so every backend refuses
// the same mistakes with the same messages (the conformance suite relies on it).
import { maxKeyBytes, type ShardTable } from "./shard-store.js";
import { StorageError } from "./storage.js";

/** Throws unless `shard` fits the log's u32 shard field. */
export function checkShardNumber(shard: number): void {
  if (!Number.isInteger(shard) || shard < 0 || shard > 0xffff_ffff) {
    throw new StorageError(`shard ${String(shard)} is not a valid shard number: use an integer from 0 to 4294967295`);
  }
}

/** Throws unless `key` fits `maxKeyBytes`; returns its length in UTF-8 bytes. */
export function checkTableKey(shard: number, table: ShardTable, key: string): number {
  const length = Buffer.byteLength(key, "utf8");
  if (length > maxKeyBytes) {
    throw new StorageError(
      `shard ${shard}: a ${table} key of ${length} bytes is longer than the limit of ${maxKeyBytes} bytes (UTF-8); use a shorter key (it starts ${JSON.stringify(key.slice(0, 40))})`,
    );
  }
  return length;
}
