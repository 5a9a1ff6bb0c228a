// The LOCK file that keeps two processes from writing one storage directory:
// both would append to the same log segment and destroy it.
import { link, open, readFile, rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import { StorageError } from "../storage.js";
import { describeFsError, fsErrorCode as errorCode } from "./fs-errors.js";

/** A held lock on a storage directory. */
export interface DirectoryLock {
  /** The lock file. */
  readonly path: string;
  /** Removes the lock file. */
  release(): Promise<void>;
}

/**
 * Takes the lock of `directory` by creating `LOCK` (exclusively) with our pid.
 * A lock whose pid is alive — this process included — is refused with
 * `StorageError`; one left by a dead process (after SIGKILL or a crash) is
 * taken over.
 */
export async function lockDirectory(directory: string): Promise<DirectoryLock> {
  const path = join(directory, "LOCK");
  for (let attempt = 0; attempt < 10; attempt++) {
    try {
      const file = await open(path, "wx");
      try {
        await file.writeFile(`${process.pid}\n`);
      } finally {
        await file.close();
      }
      return {
        path,
        async release() {
          await unlink(path).catch(() => undefined);
        },
      };
    } catch (error) {
      if (errorCode(error) !== "EEXIST") {
        throw new StorageError(`cannot use storage directory ${directory}: ${describeFsError(error)}`, {
          cause: error,
        });
      }
    }
    const holder = await readHolder(path);
    if (holder === "gone") continue;
    if (holder === "unreadable") {
      // Created but not written yet by a process that is starting: give it a
      // moment, and only then treat the empty file as stale.
      if (attempt < 5) {
        await new Promise((resolve) => setTimeout(resolve, 20));
        continue;
      }
    } else if (isAlive(holder)) {
      const who = holder === process.pid ? `this process (pid ${holder})` : `pid ${holder}`;
      throw new StorageError(
        `storage directory ${directory} is in use by ${who}: stop it first, or delete ${path} if that process is not a Shoal runtime`,
      );
    }
    await takeOver(path, holder);
  }
  throw new StorageError(`cannot lock storage directory ${directory}: ${path} keeps changing under us`);
}

async function readHolder(path: string): Promise<number | "gone" | "unreadable"> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if (errorCode(error) === "ENOENT") return "gone";
    throw new StorageError(`cannot read lock file ${path}: ${describeFsError(error)}`, { cause: error });
  }
  const pid = Number.parseInt(text.trim(), 10);
  return Number.isInteger(pid) && pid > 0 && String(pid) === text.trim() ? pid : "unreadable";
}

function isAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: alive but someone else's.
    return errorCode(error) !== "ESRCH";
  }
}

/**
 * Removes a stale lock without deleting a fresh one another process may have
 * created meanwhile: renaming claims exactly one file atomically, and if what
 * we claimed is not the stale lock we read, it goes back with `link`, which
 * does not overwrite.
 */
async function takeOver(path: string, stale: number | "unreadable"): Promise<void> {
  const claimed = `${path}.stale-${process.pid}`;
  try {
    await rename(path, claimed);
  } catch (error) {
    if (errorCode(error) === "ENOENT") return;
    throw new StorageError(`cannot take over stale lock file ${path}: ${describeFsError(error)}`, { cause: error });
  }
  const holder = await readHolder(claimed);
  if (holder !== stale && holder !== "gone") {
    await link(claimed, path).catch(() => undefined);
  }
  await unlink(claimed).catch(() => undefined);
}
