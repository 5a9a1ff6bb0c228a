import { mkdir, open, readdir, rename, stat, unlink } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Logger } from "@shoal/sdk";
import type { ShardSnapshot } from "@shoal/sdk/internal";
import { restoreBatches } from "../../shard-snapshot.js";
import { type ShardStorage, type ShardStore, shardTables } from "../../shard-store.js";
import { remove } from "../../shard-tables.js";
import { StorageError } from "../../storage.js";
import { describeFsError, fsErrorCode } from "../fs-errors.js";
import { findLegacyFiles, hasLegacyFiles, type LegacyFiles, legacyNames, readLegacyLog } from "./legacy-log.js";

/** What `upgradeLegacyDirectory` did. */
export interface LegacyUpgrade {
  /** The shards converted (none when an earlier start had converted them and only the move was left). */
  readonly shards: readonly number[];
  /** Where the old files are now. */
  readonly movedTo: string;
}

/** Options of {@link upgradeLegacyDirectory}. */
export interface LegacyUpgradeOptions {
  /** Where the conversion is reported. Default: nowhere. */
  readonly logger?: Pick<Logger, "info" | "warn">;
  /** The owner the shards are opened for. Default `"legacy-upgrade"`. */
  readonly owner?: string;
  /** Table changes per write. Default `restoreBatchSize`. */
  readonly batchSize?: number;
  /** The time in the name of the folder the old files go to. Default: now. */
  readonly now?: () => Date;
  /**
   * Called after each step (a shard converted, a file moved), for tests that
   * stop the upgrade part way. Default: the test hook
   * `SHOAL_TEST_UPGRADE_KILL_AFTER_STEPS=<n>`, which kills the process with
   * SIGKILL after the n-th step (unset: never).
   */
  readonly afterStep?: () => void;
}

/**
 * Test hook: the number of upgrade steps after which the process kills
 * itself, to check that every step leaves a directory the next start converts
 * or has converted.
 */
const killAfterStepsVariable = "SHOAL_TEST_UPGRADE_KILL_AFTER_STEPS";

/** The prefix of the folder the old files are moved to: `legacy-log-<time>`. */
export const legacyFolderPrefix = "legacy-log-";

/**
 * Converts a data directory written by the old log format (Shoal up to
 * commit c48f512: `MANIFEST`, `wal-*.log` segments, `snapshots/`) into
 * `storage`, the new store of the same directory, and moves the old files
 * into `<directory>/legacy-log-<time>/` (kept, not deleted). Does nothing and
 * resolves `undefined` when there are none.
 *
 * Each shard with data is opened, emptied of what an interrupted earlier
 * conversion wrote, and written from the old runtime's fold of its snapshot
 * and log (`legacy-state.ts`), in batches, each awaited until durable. A file
 * `legacy-upgrade-in-progress` marks the conversion from before the first
 * write until the old files are moved: a shard holding data without it was
 * written by something else, and the conversion refuses to overwrite it.
 * Only when every shard is written are the old files moved, `MANIFEST` first: while `MANIFEST` is at the
 * top of the directory the conversion has not finished, and the next start
 * converts again from the old files (the same shards, to the same entries);
 * once it has moved, the old log is converted and what is left of it is only
 * moved. So a crash at any point leaves a directory that the next start
 * converts again or has converted. Call it before the shards are opened for
 * serving.
 *
 * Rejects with `StorageError` naming the file when the old log is damaged:
 * the directory is then left as it is (nothing is moved).
 */
export async function upgradeLegacyDirectory(
  directory: string,
  storage: ShardStorage,
  options: LegacyUpgradeOptions = {},
): Promise<LegacyUpgrade | undefined> {
  const dir = resolve(directory);
  const files = await findLegacyFiles(dir);
  const marker = join(dir, upgradeMarker);
  if (!hasLegacyFiles(files)) {
    // Left by a crash after the last file moved: the conversion had finished.
    if (await exists(marker)) await removeMarker(marker, dir);
    return undefined;
  }
  const logger = options.logger;
  const step = options.afterStep ?? killAfterSteps();
  const earlier = files.manifest ? undefined : await earlierFolder(dir);
  const converted: number[] = [];
  if (earlier === undefined) {
    const shards = await readLegacyLog(dir, (message) => logger?.warn(message));
    const owner = options.owner ?? "legacy-upgrade";
    const order = [...shards.keys()].sort((a, b) => a - b);
    if (!(await exists(marker))) {
      await refuseOverStoredData(dir, storage, order, owner);
      await writeMarker(marker, dir);
    }
    for (const shard of order) {
      const snapshot = shards.get(shard)?.toSnapshot();
      shards.delete(shard);
      if (snapshot === undefined || isEmpty(snapshot)) continue;
      const store = await storage.openShard(shard, owner);
      try {
        // What an interrupted earlier conversion wrote (the marker says there was one).
        await clear(store, options.batchSize);
        for (const batch of restoreBatches(snapshot, options.batchSize)) await store.write(batch, []).durable;
      } finally {
        await store.close();
      }
      converted.push(shard);
      logger?.info(`converted shard ${shard} of the old log format in ${dir}`, { instances: snapshot.instances.length });
      step();
    }
  }
  const movedTo = earlier ?? (await newFolder(dir, options.now?.() ?? new Date()));
  await moveAside(dir, files, movedTo, step);
  await removeMarker(marker, dir);
  logger?.info(
    earlier === undefined
      ? `converted the old log format in ${dir} (${converted.length} shards) into the new store; the old files are kept in ${movedTo}: delete that folder once you no longer need to go back to an older Shoal`
      : `the old log format in ${dir} was converted by an earlier start; moved the rest of its files to ${movedTo} (kept: delete that folder once you no longer need it)`,
    { shards: converted.length, movedTo },
  );
  return { shards: converted, movedTo };
}

/**
 * The file that says a conversion is under way: created before the first
 * shard is written, deleted once the old files are moved. A shard found with
 * data in the store while it is there was written by the interrupted
 * conversion; without it, by something else, and the conversion refuses to
 * overwrite it.
 */
const upgradeMarker = "legacy-upgrade-in-progress";

/** Refuses to convert into shards that hold data not written by an earlier run of this conversion. */
async function refuseOverStoredData(dir: string, storage: ShardStorage, shards: readonly number[], owner: string): Promise<void> {
  for (const shard of shards) {
    const store = await storage.openShard(shard, owner);
    try {
      for (const table of shardTables) {
        for (const _ of store.range(table, { limit: 1 })) {
          throw new StorageError(
            `storage directory ${dir} holds both a log in the old format (${legacyNames.manifest}, wal-*.log, ${legacyNames.snapshots}/) and a store with data of shard ${shard}: converting the log would overwrite it. Refusing to start; move away the old files (to keep the store) or the store's data.mdb and lock.mdb (to convert the log)`,
          );
        }
      }
    } finally {
      await store.close();
    }
  }
}

async function writeMarker(marker: string, dir: string): Promise<void> {
  try {
    const file = await open(marker, "w");
    try {
      await file.writeFile("The old log format of this directory is being converted into data.mdb; see README, Data directory.\n");
      await file.sync();
    } finally {
      await file.close();
    }
    await fsyncDirectory(dir);
  } catch (error) {
    throw new StorageError(`cannot create ${marker}: ${describeFsError(error)}`, { cause: error });
  }
}

async function removeMarker(marker: string, dir: string): Promise<void> {
  try {
    await unlink(marker);
    await fsyncDirectory(dir);
  } catch (error) {
    if (fsErrorCode(error) !== "ENOENT") throw new StorageError(`cannot delete ${marker}: ${describeFsError(error)}`, { cause: error });
  }
}

function isEmpty(snapshot: ShardSnapshot): boolean {
  return (
    snapshot.instances.length === 0 &&
    snapshot.pending.length === 0 &&
    snapshot.outbox.length === 0 &&
    snapshot.memos.length === 0 &&
    snapshot.watermarks.length === 0 &&
    snapshot.journals.length === 0 &&
    snapshot.egress.length === 0 &&
    snapshot.deadLetters.length === 0 &&
    snapshot.nextOutboxSequence <= 1n
  );
}

/** Deletes what an interrupted earlier conversion wrote to the shard, so the conversion starts from an empty shard. */
async function clear(store: ShardStore, batchSize = 10_000): Promise<void> {
  for (const table of shardTables) {
    for (;;) {
      const keys = Array.from(store.range(table, { limit: batchSize }), (entry) => entry.key);
      if (keys.length === 0) break;
      await store.write(
        keys.map((key) => remove(table, key)),
        [],
      ).durable;
    }
  }
}

/** The folder an earlier start moved `MANIFEST` to, if one did: the conversion finished then. */
async function earlierFolder(dir: string): Promise<string | undefined> {
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.startsWith(legacyFolderPrefix)).sort();
  } catch (error) {
    throw new StorageError(`cannot list storage directory ${dir}: ${describeFsError(error)}`, { cause: error });
  }
  for (const name of names.reverse()) {
    const folder = join(dir, name);
    if (await exists(join(folder, legacyNames.manifest))) return folder;
  }
  return undefined;
}

async function newFolder(dir: string, now: Date): Promise<string> {
  const base = join(dir, `${legacyFolderPrefix}${now.toISOString().replace(/[:.]/g, "-")}`);
  for (let n = 1; ; n++) {
    const folder = n === 1 ? base : `${base}-${n}`;
    try {
      await mkdir(folder);
      await fsyncDirectory(dir);
      return folder;
    } catch (error) {
      if (fsErrorCode(error) !== "EEXIST") {
        throw new StorageError(`cannot create ${folder} for the old log files: ${describeFsError(error)}`, { cause: error });
      }
    }
  }
}

/** Moves the old files into `folder`, `MANIFEST` first (see `upgradeLegacyDirectory`), each move made durable before the next. */
async function moveAside(dir: string, files: LegacyFiles, folder: string, step: () => void): Promise<void> {
  const names = [...(files.manifest ? [legacyNames.manifest] : []), ...files.segments, ...(files.snapshots ? [legacyNames.snapshots] : [])];
  for (const name of names) {
    const from = join(dir, name);
    const to = join(folder, name);
    try {
      await rename(from, to);
      await fsyncDirectory(folder);
      await fsyncDirectory(dir);
    } catch (error) {
      throw new StorageError(`cannot move ${from} to ${to}: ${describeFsError(error)}; move the old log files there by hand`, {
        cause: error,
      });
    }
    step();
  }
}

/** The test hook `SHOAL_TEST_UPGRADE_KILL_AFTER_STEPS`. */
function killAfterSteps(): () => void {
  const limit = Number(process.env[killAfterStepsVariable] ?? "0");
  let steps = 0;
  return () => {
    steps += 1;
    if (limit > 0 && steps >= limit) process.kill(process.pid, "SIGKILL");
  };
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (error) {
    if (fsErrorCode(error) === "ENOENT") return false;
    throw new StorageError(`cannot read ${path}: ${describeFsError(error)}`, { cause: error });
  }
}

async function fsyncDirectory(path: string): Promise<void> {
  const dir = await open(path, "r");
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
