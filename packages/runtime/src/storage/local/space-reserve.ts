// Disk space for LMDB's next transaction, allocated before LMDB writes it.
//
// Why: when LMDB's write of a page fails (a full disk, a file size limit),
// lmdb-js 3.x formats the error into a 100-byte heap buffer with sprintf
// (mdb_page_flush, "Attempting to write page at position ..."). With long
// numbers in it the text is longer than the buffer, the heap is corrupted,
// and the process dies later in malloc (SIGABRT): a full disk killed the
// node instead of failing a group commit. So LMDB must never be the one that
// finds the disk full. Before each transaction the store makes sure the
// file already has, past LMDB's last page, at least as many bytes as that
// transaction can add, by writing zeros there; a write into allocated
// blocks does not need new ones. When the disk cannot give them, the group
// fails here with ENOSPC, and LMDB is not called.
//
// LMDB ignores what lies past its last page and writes its new pages over
// it, so the zeros are harmless, and only written while no LMDB transaction
// is writing pages. This holds on file systems that overwrite in place
// (ext4, xfs, tmpfs); on copy-on-write ones (btrfs, zfs) an overwrite needs
// new blocks too, and a full disk still reaches LMDB.
import { closeSync, fstatSync, openSync, writeSync } from "node:fs";

/** What is written at a time, and the least the file grows by when it must grow. */
const chunkBytes = 1 << 20;

const zeros = Buffer.alloc(chunkBytes);

/** Space allocated past LMDB's last page in `data.mdb`. */
export interface SpaceReserve {
  /**
   * Makes sure the bytes from `usedEnd` to `usedEnd + bytes` are allocated
   * in the file, growing it by at least a chunk when they are not. Returns
   * the file system's error when the disk could not give them (what was
   * written stays allocated for the next try).
   */
  ensure(usedEnd: number, bytes: number): NodeJS.ErrnoException | undefined;
  /** The end of what is allocated, in bytes. */
  readonly allocatedEnd: number;
  close(): void;
}

/** Opens the reserve of an LMDB data file that exists. */
export function openSpaceReserve(dataFile: string): SpaceReserve {
  const fd = openSync(dataFile, "r+");
  let allocatedEnd = fstatSync(fd).size;
  return {
    get allocatedEnd() {
      return allocatedEnd;
    },
    ensure(usedEnd: number, bytes: number): NodeJS.ErrnoException | undefined {
      const needed = usedEnd + bytes;
      if (needed <= allocatedEnd) return undefined;
      // LMDB may have written past what this reserve allocated (its first
      // pages, or a transaction bigger than estimated): start from the file's end.
      allocatedEnd = Math.max(allocatedEnd, fstatSync(fd).size);
      const target = needed + chunkBytes;
      try {
        while (allocatedEnd < target) {
          const length = Math.min(chunkBytes, target - allocatedEnd);
          allocatedEnd += writeSync(fd, zeros, 0, length, allocatedEnd);
        }
        return undefined;
      } catch (error) {
        allocatedEnd = fstatSync(fd).size;
        return allocatedEnd >= needed ? undefined : (error as NodeJS.ErrnoException);
      }
    },
    close(): void {
      closeSync(fd);
    },
  };
}
