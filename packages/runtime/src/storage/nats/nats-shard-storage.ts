/**
 * The `nats` shard storage of cluster mode (DESIGN §8–§9, issue 10).
 *
 * What is durable is each shard's WAL on JetStream (`shard-wal.ts`: one
 * stream per shard, fenced by stream-wide expectations). A node keeps a
 * materialized copy of the shards it owns in a local LMDB store (the `local`
 * backend, without fsync), which answers every read; it is a cache of the
 * WAL, rebuilt from it whenever it is missing or not trusted.
 *
 * What the WAL carries. Each message (`WalBatch`) holds the log records of
 * the writes it groups AND the table changes those writes made: a redo log.
 * Replaying the WAL is applying changes in order, so this module needs no
 * shard semantics and stays below `shard/` in the layering; the records stay
 * in the log for readers that want the history (and for `shoal status`). The
 * changes roughly double a message's size; the alternative, replaying records
 * through `ShardState`, would put shard semantics under storage and make a
 * replay's result depend on the code version doing it.
 *
 * Writes. `write(changes, records)` appends both to the shard's WAL (one
 * message in flight per shard; writes made meanwhile share the next message
 * and its sequence). `durable` resolves once JetStream acknowledged the
 * message and its changes are committed to the local store, in the same
 * LMDB transaction as the WAL sequence they bring it to (`meta` key
 * `walAppliedKey`, hidden from reads, with the stream's creation time: a
 * local store built from an earlier stream of the same name is not trusted). The local commit is not synced: after
 * a crash the local store is at most behind the WAL, and catches up.
 *
 * Opening a shard. `openShard` appends the new owner's fence to the WAL (a
 * stale owner's appends are refused from then on, with `FencedError`), then
 * brings the local store up to the fence: it replays the WAL after the
 * sequence the local store has applied, or, when the local store has none,
 * was built from another stream (one deleted and recreated), or is behind its first
 * retained message, empties the shard locally, restores its latest snapshot
 * and replays the WAL after that.
 *
 * Snapshots (`shard-snapshots.ts`). `snapshotShard` takes `snapshotOf` the
 * local store at the WAL sequence it has applied, with the keys of the
 * order-keyed tables that `ShardSnapshot` renumbers (`StoredShardSnapshot`),
 * so the changes after it replay onto the right keys. It stores the object,
 * then its pointer, and only then purges the WAL below the snapshot's
 * sequence (the message at that sequence stays: the last message is never
 * purged, so a new owner still learns the last writer's epoch). Older
 * snapshots are removed after. A shard's handle takes one on its own once
 * `snapshotAfterBytes` of WAL messages were applied since its last one (by
 * bytes, not age: the bytes are what a new owner has to replay).
 *
 * Limits. A write larger than the server's maximum payload is split over
 * several WAL messages; a crash between them leaves the first ones in the
 * WAL, so such a write is not atomic across crashes. The local store without
 * fsync survives a crash of the process, not necessarily of the machine:
 * after one, delete the node's directory and it is rebuilt from JetStream.
 */
import { readFileSync } from "node:fs";
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { type ConnectionOptions, connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "@shoal/sdk";
import type { LogRecord } from "@shoal/sdk/internal";
import type { NatsSecurity } from "../../config/config.js";
import { defaults } from "../../config/defaults.js";
import { createLocalShardStorage } from "../local/lmdb-storage.js";
import { restoreBatches, snapshotOf } from "../shard-snapshot.js";
import {
  type ShardStorage,
  type ShardStore,
  type ShardTable,
  type StorageStats,
  shardTables,
  type TableChange,
  type WriteResult,
} from "../shard-store.js";
import { fromOrderKey, metaKeys, orderKey, readMeta } from "../shard-tables.js";
import { FencedError, StorageError } from "../storage.js";
import { checkShardNumber, checkTableKey } from "../storage-checks.js";
import { watchConnection } from "./connection-watch.js";
import { openShardSnapshots, type SnapshotPointer, storedSnapshot } from "./shard-snapshots.js";
import { createShardWals, retryPlacement, type ShardWal, storageError } from "./shard-wal.js";

/** Options of {@link createNatsShardStorage}. */
export interface NatsShardStorageOptions {
  /** NATS server URLs to connect to (the storage closes this connection). Give this or `connection`; with `connection`, the servers it was made with, named when it is lost. */
  readonly servers?: string | readonly string[];
  /** An open connection to use instead of `servers`; the storage does not close it. */
  readonly connection?: NatsConnection;
  /** TLS and credentials for the connection to `servers`. */
  readonly security?: NatsSecurity;
  /** The directory of this node's local materialized store (LMDB); created when missing. Required. */
  readonly directory: string;
  /** Prefix of every stream and bucket: `<prefix>-wal-<shard>`, `<prefix>-snapshots`… Default `shoal`. */
  readonly prefix?: string;
  /** Replicas of the streams and buckets this creates. Default: 3 on a cluster, 1 on a single server. */
  readonly replicas?: number;
  /** How long a WAL append waits for JetStream's acknowledgement, in ms. Default 5000. */
  readonly ackTimeoutMs?: number;
  /** A shard's handle snapshots the shard once this many bytes of WAL messages were applied since its last snapshot. Default 64 MiB. */
  readonly snapshotAfterBytes?: number;
  /** Where failures of background snapshots are reported. Default: process warnings on stderr. */
  readonly logger?: Pick<Logger, "warn">;
}

/** The `nats` backend: {@link ShardStorage} plus snapshots. */
export interface NatsShardStorage extends ShardStorage {
  /**
   * Snapshots a shard this storage has open into the object store and then
   * purges the shard's WAL below it. Resolves with the snapshot's WAL
   * sequence; rejects with `StorageError` (the WAL is then left as it was).
   */
  snapshotShard(shard: number): Promise<{ sequence: bigint; object: string }>;
  /** The NATS connection it works on, for readers of the cluster's other records (`shoal status`); closed with the storage when it opened it. */
  readonly nats: NatsConnection;
}

/**
 * Connects to NATS as a node does: a lost connection is made again by the
 * client, forever, so a node outlives a NATS restart (`/healthz` says not
 * ready meanwhile); a server that vanishes without closing the socket is
 * noticed after two missed pings instead of the client's default four minutes.
 */
export function connectToNats(servers: string | string[], security: NatsSecurity = {}): Promise<NatsConnection> {
  return connect({
    servers,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 1_000,
    pingInterval: 10_000,
    maxPingOut: 2,
    ...connectionSecurity(security),
  });
}

/** The connect options for `security`, with its files read now: a missing or unreadable one is named. */
function connectionSecurity(security: NatsSecurity): Partial<ConnectionOptions> {
  const read = (what: string, path: string): string => {
    try {
      return readFileSync(path, "utf8");
    } catch (err) {
      throw new StorageError(`nats storage: cannot read the ${what} ${path}: ${(err as Error).message}`, { cause: err });
    }
  };
  const options: Partial<ConnectionOptions> = {};
  const tls = security.tls;
  if (tls !== undefined) {
    options.tls = {
      ...(tls.ca === undefined ? {} : { ca: read("TLS CA file", tls.ca) }),
      ...(tls.cert === undefined ? {} : { cert: read("TLS client certificate", tls.cert) }),
      ...(tls.key === undefined ? {} : { key: read("TLS client key", tls.key) }),
    };
  }
  if (security.user !== undefined) {
    options.user = security.user;
    options.pass = security.password;
  }
  if (security.token !== undefined) options.token = security.token;
  if (security.credentials !== undefined) {
    options.authenticator = credsAuthenticator(new TextEncoder().encode(read("credentials file", security.credentials)));
  }
  return options;
}

/** The `meta` key of the local store that holds the WAL sequence it has applied; never in a snapshot nor in `range`. */
export const walAppliedKey = "~walApplied";

const encoder = new TextEncoder();

/** One shard's handle in this process: the WAL handle, the local store, and what is waiting for the local store. */
interface Handle {
  readonly shard: number;
  readonly wal: ShardWal;
  readonly local: ShardStore;
  /** When the shard's WAL stream was created, as JetStream reports it: part of the applied mark. */
  readonly streamCreated: string;
  /** WAL messages acknowledged or in flight whose changes are not applied yet, by sequence. */
  readonly unapplied: Map<bigint, Unapplied>;
  /** Settles once every local apply issued so far settled. */
  applied: Promise<void>;
  broken: Error | undefined;
  closed: boolean;
  bytesSinceSnapshot: number;
  snapshotting: Promise<unknown> | undefined;
  /** The last WAL sequence applied to the local store (for `shoal status`: the WAL's last sequence minus this is the lag). */
  appliedSequence: bigint;
}

interface Unapplied {
  readonly changes: TableChange[];
  writes: number;
  bytes: number;
  readonly done: Promise<void>;
}

/**
 * Opens the `nats` shard storage: shard WALs, snapshots and pointers in
 * JetStream, and the node's local materialized store in `directory`. Rejects
 * with `StorageError` when NATS cannot be reached or the buckets cannot be
 * created, naming them.
 */
export async function createNatsShardStorage(options: NatsShardStorageOptions): Promise<NatsShardStorage> {
  const prefix = options.prefix ?? defaults.storage.prefix;
  const snapshotAfterBytes = options.snapshotAfterBytes ?? 64 * 1024 * 1024;
  if (!Number.isSafeInteger(snapshotAfterBytes) || snapshotAfterBytes < 1) {
    throw new StorageError(`nats storage: option snapshotAfterBytes must be a positive integer, got ${snapshotAfterBytes}`);
  }
  const logger = options.logger ?? { warn: (message: string) => process.emitWarning(message, "ShoalStorageWarning") };
  let nc: NatsConnection;
  const ownConnection = options.connection === undefined;
  if (options.connection !== undefined) nc = options.connection;
  else {
    if (options.servers === undefined || options.servers.length === 0) {
      throw new StorageError("nats storage: option servers is required (e.g. [nats://127.0.0.1:4222])");
    }
    const servers = typeof options.servers === "string" ? options.servers : [...options.servers];
    try {
      nc = await connectToNats(servers, options.security);
    } catch (err) {
      throw storageError(`nats storage: cannot connect to ${String(servers)}`, err);
    }
  }
  try {
    return await openStorage(nc, ownConnection, options, prefix, snapshotAfterBytes, logger);
  } catch (err) {
    if (ownConnection) await nc.close().catch(() => undefined);
    throw err;
  }
}

async function openStorage(
  nc: NatsConnection,
  ownConnection: boolean,
  options: NatsShardStorageOptions,
  prefix: string,
  snapshotAfterBytes: number,
  logger: Pick<Logger, "warn">,
): Promise<NatsShardStorage> {
  const timeout = options.ackTimeoutMs ?? 5_000;
  const replicas = options.replicas ?? (nc.info?.cluster === undefined ? 1 : 3);
  const js = jetstream(nc, { timeout });
  let jsm: JetStreamManager;
  try {
    jsm = await retryPlacement(() => jetstreamManager(nc, { timeout }));
  } catch (err) {
    throw storageError("nats storage: JetStream is not available (start nats-server with -js)", err);
  }
  const wals = createShardWals({ connection: nc, replicas, prefix, ackTimeoutMs: timeout });
  const snapshots = await openShardSnapshots(js, jsm, { prefix, replicas });
  const local = await createLocalShardStorage({ directory: options.directory, fsync: false });
  const handles = new Map<number, Handle>();
  const counters = { groups: 0, records: 0, bytes: 0 };
  const appends = new Map<number, { shard: number; appends: number; errors: number; seconds: number }>();
  const connection = watchConnection(nc, options.servers === undefined ? nc.getServers().map((s) => s.listen) : [options.servers].flat());

  function appendsOf(shard: number) {
    let stats = appends.get(shard);
    if (stats === undefined) {
      stats = { shard, appends: 0, errors: 0, seconds: 0 };
      appends.set(shard, stats);
    }
    return stats;
  }

  /** An append that failed while the NATS connection was lost says so: the cause is there, and the node reconnects by itself. */
  function whileDisconnected(err: unknown): unknown {
    const now = connection();
    if (err instanceof FencedError || !(err instanceof StorageError) || now.state === "connected") return err;
    return new StorageError(`${err.message} (the NATS connection is lost: the node reconnects to ${now.servers.join(", ")} by itself)`, {
      cause: err,
    });
  }

  /** Counts a WAL message's append once it settled: its latency when acknowledged, an error when not. */
  function countAppend(shard: number, durable: Promise<void>): void {
    const started = performance.now();
    const counted = appendsOf(shard);
    durable.then(
      () => {
        counted.appends++;
        counted.seconds += (performance.now() - started) / 1_000;
      },
      () => {
        counted.errors++;
      },
    );
  }
  let closed = false;

  function checkOpen(): void {
    if (closed) throw new StorageError(`nats storage (WAL streams ${prefix}-wal-*, local store ${options.directory}) is closed`);
  }

  /** Waits until nothing of a handle is in flight: its WAL appends and their local applies. */
  async function drain(handle: Handle): Promise<void> {
    await handle.wal.close();
    await Promise.all([...handle.unapplied.values()].map((u) => u.done.catch(() => undefined)));
    await handle.applied;
  }

  /** Applies one acknowledged WAL message to the local store, after the ones before it. */
  function applyMessage(handle: Handle, sequence: bigint): Promise<void> {
    const message = handle.unapplied.get(sequence) as Unapplied;
    handle.unapplied.delete(sequence);
    const result = handle.local.write([...message.changes, appliedMark(sequence, handle.streamCreated)], []);
    const done = result.durable.then(
      () => {
        // The writers this wakes append again in this turn: into one message.
        handle.wal.hold();
        if (sequence > handle.appliedSequence) handle.appliedSequence = sequence;
        counters.groups += 1;
        counters.records += message.writes;
        counters.bytes += message.bytes;
        handle.bytesSinceSnapshot += message.bytes;
        if (handle.bytesSinceSnapshot >= snapshotAfterBytes && handle.snapshotting === undefined && !handle.closed) {
          handle.snapshotting = takeSnapshot(handle)
            .catch((err: unknown) => logger.warn(`shard ${handle.shard}: background snapshot failed: ${(err as Error).message}`))
            .finally(() => {
              handle.snapshotting = undefined;
            });
        }
      },
      (err: unknown) => {
        const failed =
          err instanceof FencedError
            ? err
            : storageError(
                `shard ${handle.shard}: WAL message ${sequence} is durable but applying it to the local store ${options.directory} failed`,
                err,
              );
        handle.broken ??= failed;
        throw failed;
      },
    );
    done.catch(() => undefined);
    handle.applied = handle.applied.then(() => done).catch(() => undefined);
    return done;
  }

  function makeStore(handle: Handle, openedAtSequence: bigint): ShardStore {
    const { shard, wal, local: store } = handle;
    const fenced = () => {
      const current = handles.get(shard);
      return new FencedError(
        `shard ${shard}: this store (epoch ${wal.epoch}) was fenced by ${current === undefined ? "a later open" : `epoch ${current.wal.epoch} of owner ${current.wal.owner}`}; open the shard again to continue`,
      );
    };
    return {
      shard,
      epoch: wal.epoch,
      openedAtSequence,
      get(table: ShardTable, key: string) {
        if (table === "meta" && key === walAppliedKey) return undefined;
        return store.get(table, key);
      },
      range(table, rangeOptions) {
        const entries = store.range(table, rangeOptions);
        if (table !== "meta") return entries;
        return (function* () {
          for (const entry of entries) if (entry.key !== walAppliedKey) yield entry;
        })();
      },
      write(changes: readonly TableChange[], records: readonly LogRecord[]): WriteResult {
        checkOpen();
        if (handles.get(shard) !== handle) throw fenced();
        if (handle.closed) throw new StorageError(`shard ${shard}: this store (epoch ${wal.epoch}) is closed; open the shard again`);
        // Fenced by an owner elsewhere: this process learnt it from the WAL.
        if (handle.broken instanceof FencedError) throw handle.broken;
        if (handle.broken !== undefined) {
          throw new StorageError(`shard ${shard}: an earlier write failed (${handle.broken.message}); open the shard again`, {
            cause: handle.broken,
          });
        }
        let bytes = 0;
        for (const change of changes) {
          bytes += checkTableKey(shard, change.table, change.key) + (change.value?.length ?? 0);
          if (change.table === "meta" && change.key === walAppliedKey) {
            throw new StorageError(`shard ${shard}: the meta key ${walAppliedKey} is the nats backend's own; use another name`);
          }
        }
        const appended = wal.append(records, changes);
        let message = handle.unapplied.get(appended.sequence);
        if (message === undefined) {
          // Writes appended before this message is published join it; none can once it is acknowledged.
          const changesOfMessage: TableChange[] = [];
          countAppend(shard, appended.durable);
          const done = appended.durable.then(
            () => applyMessage(handle, appended.sequence),
            (err: unknown) => {
              throw whileDisconnected(err);
            },
          );
          done.catch(() => undefined);
          message = { changes: changesOfMessage, writes: 0, bytes: 0, done };
          handle.unapplied.set(appended.sequence, message);
        }
        message.changes.push(...changes);
        message.writes += 1;
        message.bytes += bytes;
        const durable = message.done.catch((err: unknown) => {
          handle.broken ??= err instanceof Error ? err : new Error(String(err));
          throw err;
        });
        durable.catch(() => undefined);
        return { sequence: appended.sequence, durable };
      },
      async close() {
        handle.closed = true;
        await drain(handle);
        await store.close();
      },
    };
  }

  /** The WAL sequence the local store has applied for a shard and of which stream, or undefined when it holds none. */
  function appliedOf(store: ShardStore): { sequence: bigint; streamCreated: string } | undefined {
    const value = store.get("meta", walAppliedKey);
    if (value === undefined) return undefined;
    // Anything else than this module's own mark is not trusted: the shard is rebuilt.
    const match = /^(\d+)\/(.+)$/.exec(new TextDecoder().decode(value));
    return match === null ? undefined : { sequence: BigInt(match[1] as string), streamCreated: match[2] as string };
  }

  /** Empties a shard in the local store, the applied sequence first: a crash half-way leaves it untrusted. */
  async function emptyShard(store: ShardStore): Promise<void> {
    await store.write([{ table: "meta", key: walAppliedKey, value: undefined }], []).durable;
    for (const table of shardTables) {
      for (;;) {
        const keys = Array.from(store.range(table, { limit: 10_000 }), (e) => e.key);
        if (keys.length === 0) break;
        await store.write(
          keys.map((key) => ({ table, key, value: undefined })),
          [],
        ).durable;
      }
    }
  }

  /** Restores the latest snapshot into the (emptied) local shard; returns its sequence. */
  async function restore(shard: number, store: ShardStore, firstRetained: bigint, streamCreated: string): Promise<bigint> {
    const stream = wals.streamName(shard);
    const latest = (await snapshots.pointers(shard)).at(-1);
    const covered = latest?.sequence ?? 0n;
    if (covered + 1n < firstRetained) {
      throw new StorageError(
        `shard ${shard} cannot be restored: stream ${stream} starts at sequence ${firstRetained}, but ${latest === undefined ? `KV bucket ${snapshots.names.pointers} holds no snapshot of it` : `its latest snapshot (${latest.object}) covers only up to ${latest.sequence}`}; messages ${covered + 1n}–${firstRetained - 1n} are lost: restore the stream or the snapshot from a backup`,
      );
    }
    await emptyShard(store);
    if (latest === undefined) return 0n;
    const stored = await snapshots.get(latest);
    const snapshot = stored.snapshot as NonNullable<typeof stored.snapshot>;
    const orders: Partial<Record<ShardTable, readonly bigint[]>> = {
      pending: stored.pendingOrders,
      egress: stored.egressOrders,
      deadLetter: stored.deadLetterOrders,
    };
    const seen: Partial<Record<ShardTable, number>> = {};
    const where = `snapshot ${latest.object} in object store ${snapshots.names.objects}`;
    for (const batch of restoreBatches(snapshot)) {
      // Back onto the keys the WAL's later changes name: ShardSnapshot renumbers the order-keyed tables.
      const changes = batch.map((change): TableChange => {
        const original = orders[change.table];
        if (original !== undefined) {
          const i = seen[change.table] ?? 0;
          seen[change.table] = i + 1;
          const order = original[i];
          if (order === undefined) throw new StorageError(`${where} lists fewer ${change.table} keys than entries; it is damaged`);
          return { ...change, key: orderKey(order) };
        }
        if (change.table === "meta" && change.key === metaKeys.nextOrder && stored.nextOrder > 0n) {
          return { ...change, value: encoder.encode(orderKey(stored.nextOrder)) };
        }
        return change;
      });
      await store.write(changes, []).durable;
    }
    for (const table of ["pending", "egress", "deadLetter"] as const) {
      if ((orders[table]?.length ?? 0) !== (seen[table] ?? 0)) {
        throw new StorageError(`${where} lists ${orders[table]?.length} ${table} keys for ${seen[table] ?? 0} entries; it is damaged`);
      }
    }
    await store.write([appliedMark(snapshot.sequence, streamCreated)], []).durable;
    return snapshot.sequence;
  }

  /**
   * Brings a shard's local store up to the WAL's end; resolves with the
   * sequence it reached. A stale owner may still purge the WAL below a
   * snapshot of its own while this replays: the gap that leaves is found and
   * the catch-up starts again from that newer snapshot.
   */
  async function catchUp(shard: number, store: ShardStore): Promise<{ applied: bigint; streamCreated: string }> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await catchUpOnce(shard, store);
      } catch (err) {
        if (!(err instanceof WalGapError) || attempt === 3) throw err;
      }
    }
  }

  async function catchUpOnce(shard: number, store: ShardStore): Promise<{ applied: bigint; streamCreated: string }> {
    const stream = wals.streamName(shard);
    let bounds: { first: bigint; last: bigint; created: string };
    try {
      const info = await jsm.streams.info(stream);
      bounds = { first: BigInt(info.state.first_seq), last: BigInt(info.state.last_seq), created: info.created };
    } catch (err) {
      throw storageError(`cannot read stream ${stream}`, err);
    }
    const mark = appliedOf(store);
    let applied = mark?.sequence;
    if (mark !== undefined && (mark.streamCreated !== bounds.created || mark.sequence > bounds.last)) {
      logger.warn(
        `shard ${shard}: the local store ${options.directory} was built from another stream ${stream} (created ${mark.streamCreated}, up to sequence ${mark.sequence}) than the one in NATS (created ${bounds.created}, up to ${bounds.last}): rebuilding the shard from the one in NATS`,
      );
      applied = undefined;
    }
    // The first retained message is at most one above the last (an emptied stream).
    if (applied === undefined || applied + 1n < bounds.first) applied = await restore(shard, store, bounds.first, bounds.created);
    let last: Promise<void> = Promise.resolve();
    let issued = 0;
    for await (const entry of wals.read(shard, applied)) {
      if (entry.sequence !== applied + 1n) {
        await last.catch(() => undefined);
        throw new WalGapError(
          `stream ${stream} has no messages ${applied + 1n}–${entry.sequence - 1n} (purged below a newer snapshot while replaying?)`,
        );
      }
      last = store.write([...entry.changes, appliedMark(entry.sequence, bounds.created)], []).durable;
      last.catch(() => undefined);
      applied = entry.sequence;
      // Bounds what waits in memory for the local store.
      if (++issued % 256 === 0) await last;
    }
    await last;
    return { applied, streamCreated: bounds.created };
  }

  async function takeSnapshot(handle: Handle): Promise<{ sequence: bigint; object: string }> {
    const { shard, local: store } = handle;
    // One synchronous read: every entry and the applied sequence as of one local commit.
    const sequence = appliedOf(store)?.sequence ?? 0n;
    const orders = (table: "pending" | "egress" | "deadLetter") => Array.from(store.range(table), (e) => fromOrderKey(e.key));
    const stored = storedSnapshot({
      snapshot: snapshotOf(store, sequence),
      pendingOrders: orders("pending"),
      egressOrders: orders("egress"),
      deadLetterOrders: orders("deadLetter"),
      nextOrder: readMeta(store.get("meta", metaKeys.nextOrder), 0n),
      epoch: handle.wal.epoch,
    });
    handle.bytesSinceSnapshot = 0;
    const pointer = await snapshots.put(stored);
    const stream = wals.streamName(shard);
    try {
      // Keeps the message at `sequence`: the log's last message is never purged, so its writer's epoch stays known.
      await jsm.streams.purge(stream, { seq: Number(sequence) });
    } catch (err) {
      throw storageError(`snapshot ${pointer.object} is stored, but purging stream ${stream} below sequence ${sequence} failed`, err);
    }
    const older: SnapshotPointer[] = (await snapshots.pointers(shard)).filter((p) => p.sequence < pointer.sequence);
    for (const p of older) await snapshots.remove(p);
    return { sequence, object: pointer.object };
  }

  return {
    name: "nats",
    async openShard(shard: number, owner: string): Promise<ShardStore> {
      checkOpen();
      checkShardNumber(shard);
      const previous = handles.get(shard);
      // Fences this process's earlier handle at once; what it has in flight lands (or fails) before the new fence.
      handles.delete(shard);
      if (previous !== undefined) {
        await drain(previous);
        await previous.snapshotting;
      }
      const wal = await wals.open(shard, owner);
      let store: ShardStore | undefined;
      try {
        store = await local.openShard(shard, owner);
        const { applied, streamCreated } = await catchUp(shard, store);
        const handle: Handle = {
          shard,
          wal,
          local: store,
          streamCreated,
          unapplied: new Map(),
          applied: Promise.resolve(),
          broken: undefined,
          closed: false,
          bytesSinceSnapshot: 0,
          snapshotting: undefined,
          appliedSequence: applied,
        };
        if (handles.has(shard) || closed)
          throw new FencedError(`shard ${shard}: opened again (or the storage closed) while ${owner} was opening it`);
        handles.set(shard, handle);
        appendsOf(shard);
        // What precedes the fence: 0 for a shard never written; the fence itself changes no table.
        return makeStore(handle, wal.openedAtSequence);
      } catch (err) {
        await wal.close();
        await store?.close();
        throw err;
      }
    },
    async snapshotShard(shard: number) {
      checkOpen();
      const handle = handles.get(shard);
      if (handle === undefined || handle.closed) {
        throw new StorageError(`nats storage: shard ${shard} is not open here; snapshot it on the node that owns it`);
      }
      while (handle.snapshotting !== undefined) await handle.snapshotting;
      const taking = takeSnapshot(handle);
      handle.snapshotting = taking
        .catch(() => undefined)
        .finally(() => {
          handle.snapshotting = undefined;
        });
      return taking;
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      try {
        for (const handle of handles.values()) {
          await drain(handle);
          await handle.snapshotting;
        }
        handles.clear();
        await local.close();
      } finally {
        if (ownConnection) await nc.close().catch(() => undefined);
      }
    },
    stats(): StorageStats {
      return { ...counters };
    },
    connection,
    nats: nc,
    appendStats: () => [...appends.values()].map((s) => ({ ...s, applied: handles.get(s.shard)?.appliedSequence })),
  };
}

/** The WAL has a hole where the replay needs messages. */
class WalGapError extends StorageError {
  override name = "WalGapError";
}

function appliedMark(sequence: bigint, streamCreated: string): TableChange {
  return { table: "meta", key: walAppliedKey, value: encoder.encode(`${orderKey(sequence)}/${streamCreated}`) };
}
