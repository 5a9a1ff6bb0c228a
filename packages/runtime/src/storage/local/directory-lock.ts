// The lock that keeps two processes from writing one storage directory: both
// would append to the same log segment and destroy it. It is an OS lock
// (flock) on the `LOCK` file, so the kernel drops it when its holder dies,
// however it dies: no pid has to be judged alive or dead, which in a container
// (where every restart is pid 1 again) cannot be done. It knows nothing of
// what the directory holds, so any storage format can use it.
import { constants } from "node:fs";
import { type FileHandle, open, readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { StorageError } from "../storage.js";
import { describeFsError, fsErrorCode as errorCode } from "./fs-errors.js";

// fs-ext is CommonJS without types: only its flockSync is used.
const { flockSync } = createRequire(import.meta.url)("fs-ext") as {
  flockSync(fd: number, flags: "exnb" | "un"): void;
};

/** A held lock on a storage directory. */
export interface DirectoryLock {
  /** The lock file. */
  readonly path: string;
  /** Gives the lock up; the file stays (deleting it would let two processes lock two different files). */
  release(): Promise<void>;
}

/**
 * Takes the lock of `directory`: an exclusive, non-blocking `flock` on its
 * `LOCK` file, which then holds our pid for the error message of whoever
 * tries next (the pid is informational only). A lock held by a live process,
 * this one included (a second open of the directory in the same process), is
 * refused with `StorageError`; a lock whose holder died went with it.
 */
export async function lockDirectory(directory: string): Promise<DirectoryLock> {
  const path = join(directory, "LOCK");
  let file: FileHandle;
  try {
    // No O_TRUNC: the holder's pid must stay readable until we have the lock.
    file = await open(path, constants.O_RDWR | constants.O_CREAT, 0o644);
  } catch (error) {
    throw new StorageError(`cannot use storage directory ${directory}: ${describeFsError(error)}`, { cause: error });
  }
  try {
    flockSync(file.fd, "exnb");
  } catch (error) {
    await file.close().catch(() => undefined);
    if (errorCode(error) === "EWOULDBLOCK" || errorCode(error) === "EAGAIN") {
      const holder = await readHolder(path);
      throw new StorageError(
        `storage directory ${directory} is in use by ${holder}: stop that process first (a directory is used by one process at a time)`,
      );
    }
    throw new StorageError(`cannot lock storage directory ${directory} (${path}): ${describeFsError(error)}`, {
      cause: error,
    });
  }
  try {
    await file.truncate(0);
    await file.write(`${process.pid}\n`, 0);
  } catch (error) {
    await file.close().catch(() => undefined);
    throw new StorageError(`cannot write lock file ${path}: ${describeFsError(error)}`, { cause: error });
  }
  let released: Promise<void> | undefined;
  return {
    path,
    release() {
      released ??= (async () => {
        await file.truncate(0).catch(() => undefined);
        // Closing the only descriptor of the file drops the flock.
        await file.close().catch(() => undefined);
      })();
      return released;
    },
  };
}

/** Who holds the lock, for the message: the pid it wrote, when it had written it yet. */
async function readHolder(path: string): Promise<string> {
  const text = await readFile(path, "utf8").catch(() => "");
  const pid = Number.parseInt(text.trim(), 10);
  if (!Number.isInteger(pid) || pid <= 0) return "another process (starting up: its pid is not written yet)";
  // Not compared with our own pid: in another container the same pid is another process.
  return `the process with pid ${pid}`;
}
