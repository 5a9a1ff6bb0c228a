/**
 * Shard snapshots of the cluster backend (DESIGN §9) in JetStream: each one
 * an object of the object store `<prefix>-snapshots`, under a name unique per
 * shard, epoch and sequence, and a pointer to it in the KV bucket
 * `<prefix>-snapshot-pointers` under the key `<shard>.<sequence>`.
 *
 * The pointer is created with `kv.create` under a key of its own, never
 * updated: there is no per-key CAS to trust on R3 (DESIGN §9), and none is
 * needed. The shard's latest snapshot is the pointer with the highest
 * sequence, so a stale owner writing a pointer late cannot move it back. Two
 * owners creating the same key describe the same state (every owner's local
 * store at a WAL sequence is that WAL's prefix), so either one's object does.
 * A pointer is written only once its object is stored, and the WAL is cut
 * below a snapshot only once its pointer is acknowledged. Pointers are read
 * from the stream leader, so a reader that sees the WAL cut sees the pointer;
 * and a stale owner may remove a pointer between a reader's listing and its
 * read, only after storing a newer one: the reader then lists again.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { type StoredShardSnapshot, StoredShardSnapshotSchema } from "@shoal/sdk/internal";
import { orderKey } from "../shard-tables.js";
import { StorageError } from "../storage.js";
import { retryPlacement, storageError } from "./shard-wal.js";

/** Where one snapshot is. */
export interface SnapshotPointer {
  readonly shard: number;
  /** The WAL sequence the snapshot covers: replay the messages after it. */
  readonly sequence: bigint;
  readonly epoch: bigint;
  /** The object's name in the object store. */
  readonly object: string;
}

/** The snapshots of one NATS deployment. */
export interface ShardSnapshots {
  /** Stores the snapshot's object, then its pointer; resolves once both are acknowledged. */
  put(stored: StoredShardSnapshot): Promise<SnapshotPointer>;
  /** The pointers of a shard, lowest sequence first. */
  pointers(shard: number): Promise<SnapshotPointer[]>;
  /** The snapshot a pointer names, checked against it. */
  get(pointer: SnapshotPointer): Promise<StoredShardSnapshot>;
  /** Removes a snapshot's pointer, then its object (a pointer never names a missing object while it is the latest). */
  remove(pointer: SnapshotPointer): Promise<void>;
  /** The KV bucket of the pointers and the object store, for messages. */
  readonly names: { readonly pointers: string; readonly objects: string };
}

/** Opens (creating if needed) the snapshot bucket and object store under `prefix`. */
export async function openShardSnapshots(
  js: JetStreamClient,
  jsm: JetStreamManager,
  options: { prefix: string; replicas: number },
): Promise<ShardSnapshots> {
  const pointerBucket = `${options.prefix}-snapshot-pointers`;
  const objectBucket = `${options.prefix}-snapshots`;
  let kv: Awaited<ReturnType<Kvm["create"]>>;
  let objects: Awaited<ReturnType<Objm["create"]>>;
  try {
    kv = await retryPlacement(() => new Kvm(js).create(pointerBucket, { history: 1, replicas: options.replicas }));
    objects = await retryPlacement(() => new Objm(js).create(objectBucket, { replicas: options.replicas }));
  } catch (err) {
    throw storageError(`cannot create or open the snapshot buckets ${pointerBucket} and ${objectBucket}`, err);
  }
  const pointerKey = (shard: number, sequence: bigint) => `${shard}.${orderKey(sequence)}`;

  function parsePointer(shard: number, key: string, data: Uint8Array): SnapshotPointer {
    const where = `pointer ${key} of KV bucket ${pointerBucket}`;
    let value: unknown;
    try {
      value = JSON.parse(new TextDecoder().decode(data));
    } catch (err) {
      throw storageError(`${where} is not JSON; only Shoal writes this bucket: remove the key (nats kv del ${pointerBucket} ${key})`, err);
    }
    const v = value as { object?: unknown; sequence?: unknown; epoch?: unknown };
    const sequence = typeof v.sequence === "string" && /^\d+$/.test(v.sequence) ? BigInt(v.sequence) : undefined;
    const epoch = typeof v.epoch === "string" && /^\d+$/.test(v.epoch) ? BigInt(v.epoch) : undefined;
    if (typeof v.object !== "string" || sequence === undefined || epoch === undefined || key !== pointerKey(shard, sequence)) {
      throw new StorageError(
        `${where} is not a Shoal snapshot pointer (expected {"object", "sequence", "epoch"} matching the key); only Shoal writes this bucket: remove the key (nats kv del ${pointerBucket} ${key})`,
      );
    }
    return { shard, sequence, epoch, object: v.object };
  }

  const pointerStream = `KV_${pointerBucket}`;
  const keyOf = (subject: string) => subject.slice(`$KV.${pointerBucket}.`.length);

  /**
   * A pointer's value, or null when the key holds none. From the stream
   * leader, not a direct get nor a consumer, which a lagging replica may
   * serve on R3: a new owner would miss the pointer of the snapshot the WAL
   * was just purged below, and refuse to open the shard.
   */
  async function readPointer(key: string): Promise<Uint8Array | null> {
    const message = await jsm.streams.getMessage(pointerStream, { last_by_subj: `$KV.${pointerBucket}.${key}` });
    if (message === null) return null;
    const operation = message.header?.get("KV-Operation");
    return operation === "DEL" || operation === "PURGE" ? null : message.data;
  }

  /** One listing of a shard's pointers, from the stream leader (see {@link readPointer}); `vanished` when a listed key was gone when read. */
  async function listPointers(shard: number): Promise<{ found: SnapshotPointer[]; vanished: boolean }> {
    const found: SnapshotPointer[] = [];
    let vanished = false;
    try {
      const info = await jsm.streams.info(pointerStream, { subjects_filter: `$KV.${pointerBucket}.${shard}.*` });
      for (const subject of Object.keys(info.state.subjects ?? {})) {
        const value = await readPointer(keyOf(subject));
        if (value === null) vanished = true;
        else found.push(parsePointer(shard, keyOf(subject), value));
      }
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw storageError(`cannot list the snapshot pointers of shard ${shard} in KV bucket ${pointerBucket}`, err);
    }
    return { found, vanished };
  }

  return {
    names: { pointers: pointerBucket, objects: objectBucket },
    async put(stored) {
      const snapshot = stored.snapshot;
      if (snapshot === undefined) throw new StorageError("a stored shard snapshot without its snapshot");
      const pointer: SnapshotPointer = {
        shard: snapshot.shard,
        sequence: snapshot.sequence,
        epoch: stored.epoch,
        object: `${snapshot.shard}-${stored.epoch}-${snapshot.sequence}`,
      };
      try {
        await objects.putBlob({ name: pointer.object }, toBinary(StoredShardSnapshotSchema, stored));
      } catch (err) {
        throw storageError(`cannot store snapshot ${pointer.object} of shard ${pointer.shard} in object store ${objectBucket}`, err);
      }
      const key = pointerKey(pointer.shard, pointer.sequence);
      const value = JSON.stringify({ object: pointer.object, sequence: `${pointer.sequence}`, epoch: `${pointer.epoch}` });
      try {
        await kv.create(key, value);
      } catch (err) {
        // Another owner stored a snapshot at the same sequence: the same state, and its pointer is durable.
        const existing = await readPointer(key).catch(() => null);
        if (existing === null) {
          throw storageError(`cannot write pointer ${key} to snapshot ${pointer.object} in KV bucket ${pointerBucket}`, err);
        }
        return parsePointer(pointer.shard, key, existing);
      }
      return pointer;
    },
    async pointers(shard) {
      // A pointer listed but gone when read was removed by an owner that had stored a newer one first: the next listing has it.
      for (let attempt = 1; ; attempt++) {
        const { found, vanished } = await listPointers(shard);
        if (!vanished || attempt === 5) return found.sort((a, b) => (a.sequence < b.sequence ? -1 : a.sequence > b.sequence ? 1 : 0));
      }
    },
    async get(pointer) {
      const where = `snapshot ${pointer.object} of shard ${pointer.shard} in object store ${objectBucket}`;
      let data: Uint8Array | null;
      try {
        data = await objects.getBlob(pointer.object);
      } catch (err) {
        throw storageError(`cannot read ${where}`, err);
      }
      if (data === null) {
        throw new StorageError(
          `${where} is missing although pointer ${pointerKey(pointer.shard, pointer.sequence)} of KV bucket ${pointerBucket} names it: remove the pointer to fall back to an earlier snapshot, if the WAL still holds what follows it`,
        );
      }
      let stored: StoredShardSnapshot;
      try {
        stored = fromBinary(StoredShardSnapshotSchema, data);
      } catch (err) {
        throw storageError(`${where} is not a Shoal shard snapshot (${data.length} bytes); only Shoal writes this object store`, err);
      }
      const snapshot = stored.snapshot;
      if (snapshot === undefined || snapshot.shard !== pointer.shard || snapshot.sequence !== pointer.sequence) {
        throw new StorageError(
          `${where} does not hold what its pointer says (shard ${snapshot?.shard}, sequence ${snapshot?.sequence}; expected shard ${pointer.shard}, sequence ${pointer.sequence}); only Shoal writes this object store`,
        );
      }
      return stored;
    },
    async remove(pointer) {
      const key = pointerKey(pointer.shard, pointer.sequence);
      try {
        // A stream purge by subject leaves no delete marker behind, unlike kv.purge.
        await jsm.streams.purge(`KV_${pointerBucket}`, { filter: `$KV.${pointerBucket}.${key}` });
        await objects.delete(pointer.object);
      } catch (err) {
        if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound) return;
        throw storageError(`cannot remove snapshot ${pointer.object} (pointer ${key}) of shard ${pointer.shard}`, err);
      }
    },
  };
}

/** A stored snapshot message, for `put`. */
export function storedSnapshot(init: Parameters<typeof create<typeof StoredShardSnapshotSchema>>[1]): StoredShardSnapshot {
  return create(StoredShardSnapshotSchema, init);
}
