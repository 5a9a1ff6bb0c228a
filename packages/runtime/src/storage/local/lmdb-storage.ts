// The local backend on LMDB (lmdb-js): a node's shards' tables in one memory-
// mapped B-tree file, `data.mdb`, that is crash-safe by design (copy-on-write
// pages, two meta pages). Reads come straight from the map; writes of all
// shards are batched into one write transaction per group commit.
import { closeSync, fstatSync, openSync, readdirSync, readSync, statSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { constants as osConstants } from "node:os";
import { join, resolve } from "node:path";
import type { Logger } from "@shoal/sdk";
import type { LogRecord } from "@shoal/sdk/internal";
import { type Database, IF_EXISTS, open, type RootDatabase } from "lmdb";
import { defaults as nodeDefaults } from "../../config/defaults.js";
import {
  maxKeyBytes,
  type RangeOptions,
  type ShardStorage,
  type ShardStore,
  type ShardTable,
  type StorageStats,
  shardTables,
  type TableChange,
  type TableEntry,
  type WriteResult,
} from "../shard-store.js";
import { FencedError, StorageError } from "../storage.js";
import { checkShardNumber, checkTableKey } from "../storage-checks.js";
import { type DirectoryLock, lockDirectory } from "./directory-lock.js";
import { describeFsError } from "./fs-errors.js";
import { upgradeLegacyDirectory } from "./legacy/legacy-upgrade.js";
import { openSpaceReserve, type SpaceReserve } from "./space-reserve.js";

/** Options of {@link createLocalShardStorage}. */
export interface LocalShardStorageOptions {
  /**
   * The directory of the store: LMDB's `data.mdb` and `lock.mdb`, and the
   * `LOCK` file that keeps a second process out; created when missing.
   * Required (the runtime passes `./.shoal`).
   */
  directory: string;
  /**
   * Whether `durable` waits until the transaction is flushed to disk. Default
   * `true`. With `false` (LMDB's `noSync`) writes survive a crash of the
   * process but not of the machine, which can leave the store unreadable:
   * for tests and benchmarks only.
   */
  fsync?: boolean;
  /**
   * Address space mapped for the store at open, in bytes. Default 1 GiB. The
   * map grows on its own when the data outgrows it; a larger start saves the
   * remaps on the way. It is virtual memory, not disk space nor RSS.
   */
  mapSize?: number;
  /**
   * Where the conversion of a directory written by the earlier local backend
   * (its log) is reported, at open. Default: process warnings on stderr.
   */
  logger?: Pick<Logger, "info" | "warn">;
}

/**
 * Hooks for tests of this file only: `flushed` receives LMDB's promise that a
 * group's transaction is on disk and returns the one `durable` waits for, so
 * a test can hold a flush back and see `durable` wait for it; `noRoom` fails
 * a group as a full disk does.
 */
export interface LocalShardStorageHooks {
  flushed?(flushed: Promise<void>): Promise<void>;
  /** Decides before the disk whether a transaction of `pages` new pages finds room: an error says it does not. */
  noRoom?(pages: number): NodeJS.ErrnoException | undefined;
}

/** The version of the layout below, kept in the store; a store of another version is refused. */
const formatVersion = "1";

/** LMDB's page size, fixed so that its key limit (and so `maxKeyBytes`) does not depend on the machine. */
const pageSize = 4096;

/** Bytes in front of a table key: u32 shard, u8 table. */
const keyPrefixBytes = 5;

const tableIndex = new Map<ShardTable, number>(shardTables.map((table, i) => [table, i]));

/**
 * Opens (creating it if needed) the local store of a node's shards on LMDB.
 *
 * - One LMDB environment in `directory`. The `tables` database holds every
 *   shard's tables under binary keys `[u32 shard][u8 table][UTF-8 key]`, so a
 *   table's keys sort by their bytes (for ASCII keys, as JavaScript compares
 *   strings). The `shards` database holds what is the backend's own: the
 *   format version and, per shard, its epoch, owner and sequence, and the
 *   key `["open", shard, epoch]` of the epoch it is open at.
 * - A group commit is one write transaction: every `write` and `openShard`
 *   of any shard made while the previous transaction is being committed (or
 *   while none is) goes into the next one. `durable` resolves once that
 *   transaction is flushed to disk, not merely committed: LMDB commits with
 *   overlapping sync, so a commit is visible to reads before it is on disk.
 *   A group of two or more is a batch of queued writes that LMDB's write
 *   thread runs on its own: no JavaScript runs inside it, which saves the
 *   round trip to the event loop and back that a transaction callback costs,
 *   and the event loop serves other requests while the disk flushes. A lone
 *   write (the store is idle) commits on the event loop instead, flushed
 *   before the commit returns: the hand-off to the write thread would be
 *   most of its cost.
 * - Fencing: `openShard` bumps the shard's epoch in the next transaction,
 *   before that transaction's writes, and moves the `open` key to the new
 *   epoch. Each write is a conditional block on the `open` key of its epoch,
 *   checked inside the transaction, so a fenced handle's queued writes fail
 *   with `FencedError` and nothing of them lands.
 * - Recovery is opening the file: there is no log to replay.
 * - An OS lock on the `LOCK` file keeps a second process out; it goes with
 *   its holder, however that dies (see `directory-lock.ts`).
 * - A damaged `data.mdb`, one written by another program, and a directory
 *   still holding the log of the earlier local backend are refused with a
 *   `StorageError` naming the file and what to do.
 */
export function createLocalShardStorage(options: LocalShardStorageOptions): Promise<ShardStorage> {
  return openLocalShardStorage(options, {});
}

/** {@link createLocalShardStorage} with test hooks. */
export async function openLocalShardStorage(options: LocalShardStorageOptions, hooks: LocalShardStorageHooks): Promise<ShardStorage> {
  if (typeof options.directory !== "string" || options.directory === "") {
    throw new StorageError("local storage: option directory is required (e.g. ./.shoal)");
  }
  const mapSize = options.mapSize ?? 1024 ** 3;
  if (!Number.isSafeInteger(mapSize) || mapSize < pageSize * 16) {
    throw new StorageError(`local storage: option mapSize must be an integer of at least ${pageSize * 16} bytes, got ${mapSize}`);
  }
  const directory = resolve(options.directory);
  try {
    await mkdir(directory, { recursive: true });
  } catch (error) {
    throw new StorageError(`cannot create storage directory ${directory}: ${describeFsError(error)}`, { cause: error });
  }
  const lock = await lockDirectory(directory);
  let storage: ShardStorage;
  try {
    storage = openLocked(directory, { fsync: options.fsync ?? nodeDefaults.storage.fsync, mapSize }, hooks, lock);
  } catch (error) {
    await lock.release();
    throw error;
  }
  // Under the lock, before any shard is opened for serving; also when
  // `data.mdb` exists: an interrupted conversion leaves both.
  try {
    await upgradeLegacyDirectory(directory, storage, { logger: options.logger ?? upgradeNotices });
  } catch (error) {
    await storage.close().catch(() => {});
    throw error;
  }
  return storage;
}

/** Where the upgrade of an old directory is reported when no logger is given: process warnings on stderr. */
const upgradeNotices = {
  info: (message: string) => process.emitWarning(message, "ShoalStorageUpgrade"),
  warn: (message: string) => process.emitWarning(message, "ShoalStorageWarning"),
};

interface Settings {
  readonly fsync: boolean;
  readonly mapSize: number;
}

/** What this process knows of a shard: it is the only writer, so this is authoritative once loaded. */
interface ShardInfo {
  /** The highest epoch handed out; handles with a lower one are fenced. */
  epoch: bigint;
  /** The owner that opened `epoch`, for the fencing message. */
  owner: string;
  /** The epoch whose `open` key is in the store: that of the latest open that committed. */
  stored: bigint;
  /** The highest sequence handed out. */
  sequence: bigint;
  /** The epoch a write of failed (none, 0n): that handle takes no more writes. */
  failedEpoch: bigint;
}

/** A `write` waiting for its transaction. */
interface WriteOp {
  readonly kind: "write";
  readonly shard: number;
  readonly epoch: bigint;
  readonly sequence: bigint;
  readonly changes: readonly { readonly key: Buffer; readonly value: Uint8Array | undefined }[];
  readonly bytes: number;
  /** Set once the transaction committed, when its conditional block was refused. */
  refused?: StorageError;
  readonly done: Deferred;
}

/** An `openShard` waiting for its transaction. */
interface OpenOp {
  readonly kind: "open";
  readonly shard: number;
  readonly epoch: bigint;
  readonly owner: string;
  readonly sequence: bigint;
  refused?: StorageError;
  readonly done: Deferred;
}

type Op = WriteOp | OpenOp;

interface Deferred {
  readonly promise: Promise<void>;
  resolve(): void;
  reject(error: unknown): void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Rejections are handled by whoever awaits; a write nobody awaits must not crash the process.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

function openLocked(directory: string, settings: Settings, hooks: LocalShardStorageHooks, lock: DirectoryLock): ShardStorage {
  const dataFile = join(directory, "data.mdb");
  const existed = checkDataFile(dataFile);
  let root: RootDatabase;
  let tables: Database<Buffer, Buffer>;
  let shards: Database<string, (string | number)[] | string>;
  try {
    root = open({
      path: directory,
      // A directory name with a dot would otherwise make lmdb-js treat it as a file.
      noSubdir: false,
      pageSize,
      mapSize: settings.mapSize,
      maxDbs: 4,
      noSync: !settings.fsync,
      overlappingSync: settings.fsync,
      // This backend forms its groups itself. lmdb-js's own batching by event
      // turn leaves a promise unhandled when a commit fails, which would kill
      // the process on a full disk instead of failing the group.
      eventTurnBatching: false,
      // LMDB starts the transaction at the second write queued, not a turn of
      // the event loop later: a group is queued as two (see queueGroup). In
      // lmdb-js's README, not in its types.
      ...({ txnStartThreshold: 1 } as object),
    });
    tables = root.openDB<Buffer, Buffer>({ name: "tables", encoding: "binary", keyEncoding: "binary" });
    shards = root.openDB<string, (string | number)[] | string>({ name: "shards", encoding: "string" });
  } catch (error) {
    // MDB_INVALID, MDB_VERSION_MISMATCH, MDB_PANIC, MDB_CORRUPTED: the file; anything else: the system.
    const code = (error as { code?: unknown }).code;
    if (code === -30793 || code === -30794 || code === -30795 || code === -30796) throw damaged(dataFile, error);
    throw new StorageError(`cannot open storage ${dataFile}: ${describeLmdbError(error)}`, { cause: error });
  }
  let reserve: SpaceReserve;
  try {
    reserve = openSpaceReserve(dataFile);
  } catch (error) {
    void root.close();
    throw new StorageError(`cannot open storage ${dataFile}: ${describeFsError(error)}`, { cause: error });
  }
  /** What the `tables` tree holds besides leaves, for the estimate of a transaction's pages (see pagesFor). */
  let tree = { depth: 0, branchPages: 0 };
  const measureTree = () => {
    const stats = tables.getStats() as { treeDepth: number; treeBranchPageCount: number };
    tree = { depth: stats.treeDepth, branchPages: stats.treeBranchPageCount };
  };
  try {
    measureTree();
    // The format version of a new store is LMDB's first write.
    const noSpace = reserveSpace(pagesFor([]));
    if (noSpace !== undefined) throw noSpace;
    checkOpened(root, tables, shards, dataFile, existed);
  } catch (error) {
    reserve.close();
    void root.close();
    throw error;
  }

  const known = new Map<number, ShardInfo>();
  const counters = { groups: 0, records: 0, bytes: 0 };
  let pending: Op[] = [];
  /** Whether a transaction is queued or committing; the writes meanwhile wait for the next. */
  let writing = false;
  /** Resolves (never rejects) once every group started so far has settled. */
  let lastGroup: Promise<void> = Promise.resolve();
  /** Resolves (never rejects) once the latest transaction has committed or failed. */
  let currentCommit: Promise<void> = Promise.resolve();
  let closed = false;
  /** Whether the latest transaction failed. */
  let lastFailed = false;
  /** Whether a group is being written in a synchronous transaction on the event loop (see queueGroup). */
  let committingOnLoop = false;

  function checkOpen(): void {
    if (closed) throw new StorageError(`local storage ${directory} is closed`);
  }

  function infoOf(shard: number): ShardInfo {
    let info = known.get(shard);
    if (info === undefined) {
      const epoch = BigInt(shards.get(["epoch", shard]) ?? "0");
      info = {
        epoch,
        owner: shards.get(["owner", shard]) ?? "",
        stored: epoch,
        sequence: BigInt(shards.get(["sequence", shard]) ?? "0"),
        failedEpoch: 0n,
      };
      known.set(shard, info);
    }
    return info;
  }

  /**
   * Allocates room in the file for a transaction of `pages` new pages at
   * most, before LMDB writes it (see space-reserve.ts); the error when the
   * disk has none.
   */
  function reserveSpace(pages: number): StorageError | undefined {
    const info = (root as unknown as { env: { info(): { lastPageNumber: number } } }).env.info();
    const before = reserve.allocatedEnd;
    const error = hooks.noRoom?.(pages) ?? reserve.ensure((info.lastPageNumber + 1) * pageSize, pages * pageSize);
    if (reserve.allocatedEnd !== before) measureTree();
    if (error === undefined) return undefined;
    return new StorageError(`local storage ${directory}: a write transaction failed: ${describeFsError(error)}: no room for its pages`, {
      cause: error,
    });
  }

  /**
   * The most pages a group's transaction can add to the file. LMDB copies
   * every page it changes: a change's leaf, the branch pages above it (all
   * of them at most, whatever the number of changes), and a put may split
   * its leaf; a large value takes overflow pages of its own. Then the
   * `shards` entries of each write or open, the main tree, and the records
   * of the pages the transaction frees. The branch pages and the depth are
   * measured each time the file grows; the chunk of room the reserve adds
   * beyond the estimate covers what they grow by meanwhile.
   */
  function pagesFor(ops: readonly Op[]): number {
    let pages = 16 + 2 * (tree.depth + 1) + tree.branchPages;
    for (const op of ops) {
      if (op.kind === "open") {
        pages += 12;
        continue;
      }
      pages += 4;
      for (const change of op.changes) pages += change.value === undefined ? 1 : 2 + Math.ceil(change.value.length / pageSize);
    }
    return pages;
  }

  function enqueue(op: Op): void {
    pending.push(op);
    if (!writing) startGroup();
  }

  function startGroup(): void {
    writing = true;
    // Everything queued until the end of this turn of the event loop joins the group.
    currentCommit = new Promise<void>((resolve) => setImmediate(() => resolve(queueGroup())));
  }

  /** Queues the pending ops as one transaction; resolves once it has committed or failed and the next group started. */
  function queueGroup(): Promise<void> {
    let ops = pending;
    pending = [];
    // Opens first: a handle's writes queued before its shard was opened
    // again are then refused by their conditional block, and none of them lands.
    ops.sort((a, b) => (a.kind === b.kind ? 0 : a.kind === "open" ? -1 : 1));
    const applied: Promise<boolean>[] = [];
    /** The epoch whose `open` key each shard has once the blocks queued so far have run. */
    const opened = new Map<number, bigint>();
    const noSpace = reserveSpace(pagesFor(ops));
    if (noSpace !== undefined) {
      // LMDB never sees this transaction: the group and what queued behind it fail as a failed commit does.
      ops = [...ops, ...pending];
      pending = [];
      markFailed(ops);
      const previous = lastGroup;
      lastGroup = previous.then(() => settle(ops, noSpace, false));
      nextGroup();
      return Promise.resolve();
    }
    const writeOps = () => {
      for (const op of ops) {
        if (op.kind === "write") applied.push(queueWrite(op));
        else {
          applied.push(queueOpen(op, opened.get(op.shard) ?? infoOf(op.shard).stored));
          opened.set(op.shard, op.epoch);
        }
      }
    };
    let committed: Promise<unknown>;
    try {
      if (ops.length === 1) {
        // A lone op: the store is not under load. It commits here, on the
        // event loop, in one synchronous transaction that LMDB flushes (both
        // flushes) before it returns. That saves the hand-off to LMDB's write
        // thread and back, a tenth to a quarter of a millisecond of a request
        // at one request in flight (bench/RESULTS.md). Nothing else can run
        // meanwhile, which costs little here and much in a busy store: a
        // group of two or more goes to the write thread.
        committingOnLoop = true;
        try {
          root.transactionSync(writeOps);
        } finally {
          committingOnLoop = false;
        }
        committed = Promise.resolve();
      } else {
        // Queued writes that LMDB's write thread runs as one transaction, without
        // calling back into JavaScript: one batch (LMDB starts nothing before its
        // end), then one plain write, the format version again, which is the
        // second write queued: LMDB starts the transaction at once, not a turn later.
        const batch = tables.batch(writeOps);
        committed = Promise.all([batch, shards.put("format", formatVersion)]);
      }
    } catch (error) {
      committed = Promise.reject(error);
    }
    // Taken now, before any later transaction is queued: LMDB's promise that this one is on disk.
    const flushed = new Promise<void>((res, rej) => {
      (root.flushed as PromiseLike<boolean>).then(() => res(), rej);
    });
    const onDisk = hooks.flushed?.(flushed) ?? flushed;
    // A block's promise is false when its condition failed; all of them reject with a failed commit.
    const checked = Promise.all([committed, ...applied]).then(([, ...passed]) => {
      ops.forEach((op, i) => {
        if (passed[i] === true) {
          if (op.kind === "open") infoOf(op.shard).stored = op.epoch;
        } else op.refused = refusal(op);
      });
    });
    const outcome = Promise.all([checked, onDisk]).then(
      () => undefined,
      (error: unknown) => writeFailed(directory, error),
    );
    // Groups settle in order: a transaction is never reported durable before an earlier one.
    const previous = lastGroup;
    lastGroup = Promise.all([outcome, previous]).then(([error]) => settle(ops, error));
    return checked.then(
      () => nextGroup(),
      () => {
        // What was queued behind a failed transaction fails with it: its
        // writes may build on what was lost (or LMDB never ran the transaction).
        ops = [...ops, ...pending];
        pending = [];
        markFailed(ops);
        nextGroup();
      },
    );
  }

  /**
   * Stops the handles of the failed ops' shards at once, before their
   * rejections arrive: a handle's next write would build on the lost ones
   * (the shard applied them in memory), and a smaller transaction may well
   * find room where this one did not.
   */
  function markFailed(ops: readonly Op[]): void {
    for (const op of ops) if (op.kind === "write") infoOf(op.shard).failedEpoch = op.epoch;
  }

  function nextGroup(): void {
    writing = false;
    if (pending.length > 0) startGroup();
  }

  /** Settles a group's ops in order; `byLmdb`: whether LMDB ran its transaction (then a failure is LMDB's, and close must not wait for it). */
  function settle(ops: readonly Op[], error: StorageError | undefined, byLmdb = true): void {
    if (byLmdb) lastFailed = error !== undefined;
    if (error === undefined) {
      counters.groups += 1;
      for (const op of ops) {
        if (op.kind === "write" && op.refused === undefined) {
          counters.records += 1;
          counters.bytes += op.bytes;
        }
      }
    }
    for (const op of ops) {
      if (op.refused !== undefined) op.done.reject(op.refused);
      else if (error !== undefined) op.done.reject(error);
      else op.done.resolve();
    }
  }

  /** The key that is in the store for the epoch a shard is open at, and for no other. */
  function openKey(shard: number, epoch: bigint): (string | number)[] {
    return ["open", shard, epoch.toString()];
  }

  /** Queues an open into the batch: the epoch bumped and the `open` key moved from `stored`, unless that epoch was opened already. */
  function queueOpen(op: OpenOp, stored: bigint): Promise<boolean> {
    return shards.ifNoExists(openKey(op.shard, op.epoch), () => {
      shards.put(["epoch", op.shard], op.epoch.toString());
      shards.put(["owner", op.shard], op.owner);
      shards.put(["sequence", op.shard], op.sequence.toString());
      shards.remove(openKey(op.shard, stored));
      shards.put(openKey(op.shard, op.epoch), "open");
    });
  }

  /**
   * `block` in the transaction, run only while `key` is in `shards`; the
   * promise is whether it ran. Inside a synchronous transaction the key is
   * checked here: there lmdb-js's `ifVersion(key, IF_EXISTS)` takes
   * `IF_EXISTS` for a duplicate value to look for, and throws.
   */
  function ifOpen(key: (string | number)[], block: () => void): Promise<boolean> {
    if (!committingOnLoop) return shards.ifVersion(key, IF_EXISTS, block);
    if (!shards.doesExist(key)) return Promise.resolve(false);
    block();
    return Promise.resolve(true);
  }

  /** Queues a write into the batch as a block that runs only while its epoch is the one the shard is open at. */
  function queueWrite(op: WriteOp): Promise<boolean> {
    return ifOpen(openKey(op.shard, op.epoch), () => {
      for (const change of op.changes) {
        if (change.value === undefined) tables.remove(change.key);
        else tables.put(change.key, change.value as Buffer);
      }
      shards.put(["sequence", op.shard], op.sequence.toString());
    });
  }

  function refusal(op: Op): FencedError {
    const info = infoOf(op.shard);
    return op.kind === "open"
      ? new FencedError(`shard ${op.shard}: epoch ${op.epoch} was opened again meanwhile (epoch ${info.epoch})`)
      : new FencedError(
          `shard ${op.shard}: this store (epoch ${op.epoch}) was fenced by epoch ${info.epoch}; its write was refused and nothing of it was stored`,
        );
  }

  function openStore(shard: number, info: ShardInfo, epoch: bigint, openedAtSequence: bigint): ShardStore {
    let closedStore = false;
    let broken: Error | undefined;
    let last: Promise<void> = Promise.resolve();

    function fenced(): FencedError {
      return new FencedError(`shard ${shard}: this store (epoch ${epoch}) was fenced by epoch ${info.epoch} of owner ${info.owner}`);
    }

    return {
      shard,
      epoch,
      openedAtSequence,
      get(table: ShardTable, key: string): Uint8Array | undefined {
        const encoded = tableKey(shard, table, key, false);
        return encoded === undefined ? undefined : tables.get(encoded);
      },
      range(table: ShardTable, options: RangeOptions = {}): Iterable<TableEntry> {
        return rangeOf(tables, shard, table, options);
      },
      write(changes: readonly TableChange[], _records: readonly LogRecord[]): WriteResult {
        checkOpen();
        if (info.epoch !== epoch) throw fenced();
        if (closedStore) throw new StorageError(`shard ${shard}: this store (epoch ${epoch}) is closed`);
        if (broken !== undefined || info.failedEpoch === epoch) {
          const why = broken?.message ?? "its transaction failed";
          throw new StorageError(`shard ${shard}: an earlier write failed (${why}); open the shard again`);
        }
        let bytes = 0;
        const encoded = changes.map((change) => {
          const key = tableKey(shard, change.table, change.key, true) as Buffer;
          bytes += key.length - keyPrefixBytes + (change.value?.length ?? 0);
          return { key, value: change.value };
        });
        info.sequence += 1n;
        const op: WriteOp = { kind: "write", shard, epoch, sequence: info.sequence, changes: encoded, bytes, done: deferred() };
        enqueue(op);
        const durable = op.done.promise.catch((error: unknown) => {
          broken ??= error instanceof Error ? error : new Error(String(error));
          throw error;
        });
        durable.catch(() => {});
        last = durable;
        return { sequence: op.sequence, durable };
      },
      async close(): Promise<void> {
        closedStore = true;
        await last.catch(() => {});
      },
    };
  }

  return {
    name: "local",
    async openShard(shard: number, owner: string): Promise<ShardStore> {
      checkOpen();
      checkShardNumber(shard);
      const info = infoOf(shard);
      // Fences the earlier handles at once: their next write throws.
      info.epoch += 1n;
      info.owner = owner;
      const op: OpenOp = { kind: "open", shard, epoch: info.epoch, owner, sequence: info.sequence, done: deferred() };
      enqueue(op);
      await op.done.promise;
      return openStore(shard, info, op.epoch, op.sequence);
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      try {
        while (writing || pending.length > 0) await Promise.all([currentCommit, lastGroup]);
        await lastGroup;
        reserve.close();
        const closing = root.close();
        // lmdb-js waits for the flush of the last transaction, which never
        // comes when that transaction failed: then it closes in its own time.
        if (lastFailed) closing.catch(() => {});
        else await closing;
      } finally {
        await lock.release();
      }
    },
    stats(): StorageStats {
      return { ...counters };
    },
    async backup(target: string): Promise<{ directory: string; bytes: number }> {
      checkOpen();
      const copy = resolve(target);
      await prepareBackupDirectory(copy, directory);
      try {
        // mdb_env_copy2 in a read transaction: a consistent copy while writes go on.
        await root.backup(copy, false);
        return { directory: copy, bytes: statSync(join(copy, "data.mdb")).size };
      } catch (error) {
        throw new StorageError(`backing up ${directory} into ${copy} failed: ${describeFsError(error)}`, { cause: error });
      }
    },
  };
}

/** Creates the backup's directory, or checks that it is empty and not the store's own. */
async function prepareBackupDirectory(copy: string, directory: string): Promise<void> {
  if (copy === directory) throw new StorageError(`cannot back up ${directory} into itself: name an empty directory elsewhere`);
  try {
    await mkdir(copy, { recursive: true });
  } catch (error) {
    throw new StorageError(`cannot create backup directory ${copy}: ${describeFsError(error)}`, { cause: error });
  }
  const names = readdirSync(copy);
  if (names.length > 0) {
    throw new StorageError(
      `backup directory ${copy} is not empty (${names.slice(0, 3).join(", ")}${names.length > 3 ? ", ..." : ""}): name a new or empty directory`,
    );
  }
}

/**
 * The LMDB key of a table entry. A key longer than `maxKeyBytes` is refused
 * with a `StorageError` when `forWrite`; a read of one finds nothing.
 */
function tableKey(shard: number, table: ShardTable, key: string, forWrite: boolean): Buffer | undefined {
  let length: number;
  if (forWrite) length = checkTableKey(shard, table, key);
  else {
    length = Buffer.byteLength(key, "utf8");
    if (length > maxKeyBytes) return undefined;
  }
  const buffer = Buffer.allocUnsafe(keyPrefixBytes + length);
  buffer.writeUInt32BE(shard, 0);
  buffer[4] = tableIndex.get(table) as number;
  buffer.write(key, keyPrefixBytes, "utf8");
  return buffer;
}

/** A table's entries in key order, read lazily from LMDB. */
function* rangeOf(tables: Database<Buffer, Buffer>, shard: number, table: ShardTable, options: RangeOptions): Iterable<TableEntry> {
  const prefix = tableKey(shard, table, "", false) as Buffer;
  let start = prefix;
  // The table's keys are followed by those of the next table index.
  let end = Buffer.from(prefix);
  end[4] = (end[4] as number) + 1;
  if (options.after !== undefined) {
    // The least key greater than `after`: `after` followed by a zero byte.
    const after = Buffer.concat([prefix, Buffer.from(options.after, "utf8"), Buffer.alloc(1)]);
    if (Buffer.compare(after, start) > 0) start = after;
  }
  if (options.prefix !== undefined && options.prefix !== "") {
    const from = Buffer.concat([prefix, Buffer.from(options.prefix, "utf8")]);
    if (Buffer.compare(from, start) > 0) start = from;
    // UTF-8 never has a 0xff byte, so one more in the last byte bounds every key with this prefix.
    const to = Buffer.from(from);
    to[to.length - 1] = (to[to.length - 1] as number) + 1;
    if (Buffer.compare(to, end) < 0) end = to;
  }
  if (options.before !== undefined) {
    const before = Buffer.concat([prefix, Buffer.from(options.before, "utf8")]);
    if (Buffer.compare(before, end) < 0) end = before;
  }
  if (Buffer.compare(start, end) >= 0 || options.limit === 0) return;
  const entries = tables.getRange({ start, end, ...(options.limit === undefined ? {} : { limit: options.limit }) });
  for (const { key, value } of entries) {
    yield { key: key.toString("utf8", keyPrefixBytes), value };
  }
}

/**
 * Checks `data.mdb` before LMDB maps it: LMDB keeps no checksums and trusts
 * its file, so a damaged meta page or a root page cut off the end would kill
 * the process (SIGSEGV, SIGBUS) instead of failing the open. This reads the
 * two meta pages (LMDB 0.9.90 as lmdb-js builds it: a 24-byte page header,
 * then the meta) and checks that both are meta pages of the expected version
 * and that the roots of LMDB's two core trees lie inside the file. Damage
 * deeper in the file is not found here. Returns whether the file existed.
 */
function checkDataFile(dataFile: string): boolean {
  let bytes: Buffer;
  let size: number;
  try {
    const fd = openSync(dataFile, "r");
    try {
      size = fstatSync(fd).size;
      bytes = Buffer.alloc(Math.min(size, 2 * 65536));
      readSync(fd, bytes, 0, bytes.length, 0);
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw new StorageError(`cannot read ${dataFile}: ${describeFsError(error)}`, { cause: error });
  }
  if (size < 2 * metaBytes) {
    throw damaged(dataFile, new Error(`the file has ${size} bytes, fewer than LMDB's two meta pages`));
  }
  // The page size is in the first meta page; the second meta page follows it.
  const psize = bytes.readUInt32LE(pageHeaderBytes + dbsOffset);
  if (!(psize >= 512 && psize <= 65536 && (psize & (psize - 1)) === 0) || size < 2 * psize) {
    throw damaged(dataFile, new Error("the first meta page is not an LMDB meta page"));
  }
  for (const page of [0, 1]) {
    const at = page * psize;
    const flags = bytes.readUInt16LE(at + 18);
    const magic = bytes.readUInt32LE(at + pageHeaderBytes);
    const version = bytes.readUInt32LE(at + pageHeaderBytes + 4);
    if ((flags & 0x08) === 0 || magic !== 0xbeefc0de || version !== 2) {
      throw damaged(
        dataFile,
        new Error(`meta page ${page} is not an LMDB meta page (flags ${flags}, magic ${magic.toString(16)}, version ${version})`),
      );
    }
    // mm_dbs[FREE_DBI] then mm_dbs[MAIN_DBI], 48 bytes each, md_root last in each.
    for (const [name, offset] of [
      ["free-space", dbsOffset + 40],
      ["main", dbsOffset + 48 + 40],
    ] as const) {
      const root = bytes.readBigUInt64LE(at + pageHeaderBytes + offset);
      // An empty tree has the root P_INVALID (all ones).
      if (root !== 0xffff_ffff_ffff_ffffn && (root + 1n) * BigInt(psize) > BigInt(size)) {
        throw damaged(
          dataFile,
          new Error(
            `meta page ${page} puts the root of the ${name} tree at page ${root}, past the end of the file (${size} bytes): the file was cut short`,
          ),
        );
      }
    }
  }
  return true;
}

/** Bytes of LMDB's page header in front of the meta (lmdb-js's LMDB: pgno, txnid, pad, flags, lower, upper). */
const pageHeaderBytes = 24;

/** Where the meta's `mm_dbs` start: after magic, version, address and map size. */
const dbsOffset = 4 + 4 + 8 + 8;

/** The least bytes a meta page takes: its header and the meta. */
const metaBytes = pageHeaderBytes + 4 + 4 + 8 + 8 + 2 * 48 + 8 + 8 + 8;

/** Checks what the meta pages say against the file and the format version; writes the version into a new store. */
function checkOpened(
  root: RootDatabase,
  tables: Database<Buffer, Buffer>,
  shards: Database<string, (string | number)[] | string>,
  dataFile: string,
  existed: boolean,
): void {
  const version = shards.get("format");
  if (version === undefined) {
    const foreign = [...root.getKeys({ limit: 3 })].some((key) => key !== "tables" && key !== "shards");
    if (existed && (foreign || shards.getKeysCount() > 0 || tables.getKeysCount({ limit: 1 }) > 0)) {
      throw new StorageError(`${dataFile} is an LMDB store not written by Shoal (no format version): point the directory option elsewhere`);
    }
    shards.putSync("format", formatVersion);
    return;
  }
  if (version !== formatVersion) {
    throw new StorageError(
      `${dataFile} has format version ${version}, which this version of Shoal does not read (it reads ${formatVersion}): run the Shoal version that wrote it`,
    );
  }
}

function damaged(dataFile: string, error: unknown): StorageError {
  const why = error instanceof Error ? error.message : String(error);
  return new StorageError(
    `${dataFile} is damaged or not an LMDB file (${why}): restore the directory from a backup, or move it away to start empty`,
    { cause: error },
  );
}

/** The error of a failed transaction, naming the directory and the OS error LMDB reported. */
async function writeFailed(directory: string, error: unknown): Promise<StorageError> {
  if (error instanceof StorageError) return error;
  // lmdb-js rejects with "Commit failed" and keeps the cause in a promise.
  const commitError = (error as { commitError?: Promise<unknown> } | undefined)?.commitError;
  const cause =
    commitError === undefined
      ? error
      : await commitError.then(
          () => error,
          (e: unknown) => e,
        );
  return new StorageError(`local storage ${directory}: a write transaction failed: ${describeLmdbError(cause)}`, { cause });
}

/** `file too large (EFBIG): ...` for LMDB's errno codes, the message otherwise. */
function describeLmdbError(error: unknown): string {
  const code = (error as { code?: unknown } | undefined)?.code;
  const message = error instanceof Error ? error.message : String(error);
  const name = typeof code === "number" ? errnoNames.get(code) : undefined;
  if (name === undefined) return message;
  const described = describeFsError(Object.assign(new Error(message), { code: name }));
  return described.includes(message) ? described : `${described}: ${message}`;
}

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, n]) => [n, name]));
