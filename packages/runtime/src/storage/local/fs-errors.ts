// Wording of file system errors in StorageError messages: the errno stays in
// the text (people search for it), with plain words for the common ones.

const plainWords: Record<string, string> = {
  ENOSPC: "disk full",
  EDQUOT: "disk quota exceeded",
  EFBIG: "file too large",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "read-only file system",
  ENOTDIR: "a path component is not a directory",
  ENOENT: "no such file or directory",
  EIO: "I/O error",
};

/** `disk full (ENOSPC)` for errno errors, the message otherwise. */
export function describeFsError(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code !== undefined) {
    const words = plainWords[code];
    return words === undefined ? `${code} (${(error as Error).message})` : `${words} (${code})`;
  }
  return error instanceof Error ? error.message : String(error);
}

/** The errno code of a Node file system error, if it is one. */
export function fsErrorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}
