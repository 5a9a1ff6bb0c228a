import { create } from "@bufbuild/protobuf";
import { type ShardSnapshot, ShardSnapshotSchema } from "@shoal/sdk/internal";
import type { ShardStore, TableChange } from "./shard-store.js";
import { decodeValue, expiryKey, metaKeys, orderKey, put, putIndex, putMeta, readMeta } from "./shard-tables.js";

/**
 * A snapshot of one shard: every table of its store, decoded, as one
 * `ShardSnapshot`. The upgrade of old data directories produces one from the
 * old log; the cluster backend (DESIGN §9) stores one per shard and rebuilds a
 * node's store from it plus the log after `sequence`.
 *
 * Keyed tables (instances, memos, journals, watermarks, outbox) come in key
 * order, the others in the order they were accepted. The snapshot holds no
 * keys of the order-keyed tables (`pending`, `egress`,
 * `deadLetter`): only their order, which `restoreChanges` numbers again from 1.
 *
 * @param sequence the log sequence the snapshot covers; default: the store's
 *   `openedAtSequence` (nothing written through this handle yet).
 */
export function snapshotOf(store: ShardStore, sequence: bigint = store.openedAtSequence): ShardSnapshot {
  const values = <T extends "instance" | "pending" | "outbox" | "memo" | "journal" | "egress" | "deadLetter" | "watermark">(table: T) =>
    Array.from(store.range(table), (entry) => decodeValue(table, entry.value));
  return create(ShardSnapshotSchema, {
    shard: store.shard,
    sequence,
    instances: values("instance"),
    pending: values("pending"),
    outbox: values("outbox"),
    memos: values("memo"),
    watermarks: values("watermark"),
    journals: values("journal"),
    nextOutboxSequence: readMeta(store.get("meta", metaKeys.nextOutboxSequence), 1n),
    egress: values("egress"),
    deadLetters: values("deadLetter"),
  });
}

/** Changes per batch of `restoreBatches` by default: about a megabyte of 100-byte states. */
export const restoreBatchSize = 10_000;

/**
 * The table entries that hold `snapshot` in a fresh shard, in batches of at
 * most `batchSize` changes, produced lazily: a caller writes (and may await)
 * each batch before the next is encoded, so a shard of a million instances
 * never exists twice in memory as changes. Write them into an empty shard
 * (what is in the store already and not in the snapshot stays).
 *
 * The order-keyed tables get keys `order(1)`, `order(2)`, ... in snapshot
 * order (`pending` first, then `egress`, then `deadLetter`, from one counter)
 * and `meta.nextOrder` the next one; expiring instances and memos get their
 * expiry index entries, and `meta` the counts of instances, memos and
 * journals.
 */
export function* restoreBatches(snapshot: ShardSnapshot, batchSize: number = restoreBatchSize): Generator<TableChange[]> {
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
  let batch: TableChange[] = [];
  for (const change of restoreChangeStream(snapshot)) {
    batch.push(change);
    if (batch.length >= batchSize) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}

/** Every change of `restoreBatches`, as one array: for small shards and tests. */
export function restoreChanges(snapshot: ShardSnapshot): TableChange[] {
  return [...restoreChangeStream(snapshot)];
}

function* restoreChangeStream(snapshot: ShardSnapshot): Generator<TableChange> {
  for (const instance of snapshot.instances) {
    // The `instance` table's key (shard-tables.ts): the type name holds no `/`.
    const id = `${instance.type}/${instance.key}`;
    yield put("instance", id, instance);
    if (instance.expiresAtMs > 0n) yield putIndex("instanceExpiry", expiryKey(instance.expiresAtMs, id));
  }
  let order = 1n;
  for (const envelope of snapshot.pending) yield put("pending", orderKey(order++), envelope);
  for (const message of snapshot.egress) yield put("egress", orderKey(order++), message);
  for (const letter of snapshot.deadLetters) yield put("deadLetter", orderKey(order++), letter);
  yield putMeta("nextOrder", order);
  for (const entry of snapshot.outbox) yield put("outbox", orderKey(entry.sequence), entry);
  yield putMeta("nextOutboxSequence", snapshot.nextOutboxSequence > 0n ? snapshot.nextOutboxSequence : 1n);
  for (const memo of snapshot.memos) {
    yield put("memo", memo.id, memo);
    if (memo.expiresAtMs > 0n) yield putIndex("memoExpiry", expiryKey(memo.expiresAtMs, memo.id));
  }
  for (const journal of snapshot.journals) yield put("journal", journal.invocationId, journal);
  yield putMeta("instances", BigInt(snapshot.instances.length));
  yield putMeta("memos", BigInt(snapshot.memos.length));
  yield putMeta("journals", BigInt(snapshot.journals.length));
  for (const watermark of snapshot.watermarks) yield put("watermark", orderKey(watermark.shard), watermark);
}
