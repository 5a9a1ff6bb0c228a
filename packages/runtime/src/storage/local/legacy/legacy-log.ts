// The reader of the local backend's old format (Shoal up to commit c48f512):
// the write-ahead log in `wal-<first sequence>.log` segments, the latest
// snapshot of each shard in `snapshots/shard-<n>-<sequence>.snap`, and the
// `MANIFEST` listing both. It reads a directory as the old runtime's open did,
// with the same checks and the same error messages naming the damaged file,
// but changes nothing: a torn write at the end of the log is skipped, not cut
// off. Only the upgrade (`legacy-upgrade.ts`) uses it.
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { LogRecordSchema, ShardSnapshotSchema } from "@shoal/sdk/internal";
import { StorageError } from "../../storage.js";
import { describeFsError, fsErrorCode } from "../fs-errors.js";
import {
  checkFrame,
  decodeManifest,
  decodeSnapshotFile,
  findGroupStart,
  type Manifest,
  RECORD_HEADER_BYTES,
  readRecordHeader,
} from "./legacy-format.js";
import { LegacyShardState } from "./legacy-state.js";

/** Names of the old format's files in a data directory. */
export const legacyNames = {
  manifest: "MANIFEST",
  snapshots: "snapshots",
  segment: /^wal-(\d{20})\.log$/,
} as const;

const SNAPSHOT_NAME = /^shard-(\d+)-(\d{20})\.snap$/;

/** The old format's files found at the top of a data directory. */
export interface LegacyFiles {
  /** Whether `MANIFEST` is there: the old log has not been converted yet. */
  readonly manifest: boolean;
  /** The names of the log segments there. */
  readonly segments: readonly string[];
  /** Whether the `snapshots/` folder is there. */
  readonly snapshots: boolean;
}

/** Lists the old format's files at the top of `directory` (none when it does not exist). */
export async function findLegacyFiles(directory: string): Promise<LegacyFiles> {
  let names: string[];
  try {
    names = await readdir(directory);
  } catch (error) {
    if (fsErrorCode(error) === "ENOENT") return { manifest: false, segments: [], snapshots: false };
    throw new StorageError(`cannot list storage directory ${directory}: ${describeFsError(error)}`, { cause: error });
  }
  return {
    manifest: names.includes(legacyNames.manifest),
    segments: names.filter((n) => legacyNames.segment.test(n)).sort(),
    snapshots: names.includes(legacyNames.snapshots),
  };
}

/** Whether any of the old format's files are there. */
export function hasLegacyFiles(files: LegacyFiles): boolean {
  return files.manifest || files.snapshots || files.segments.length > 0;
}

/**
 * Reads an old-format directory and folds each shard's latest snapshot and
 * the records after it into its state, as the old runtime recovered. Shards
 * that only ever got fence records are left out. Rejects with `StorageError`
 * naming the file when the directory is damaged (a corrupt or missing segment,
 * snapshot or manifest), as the old runtime refused to open it.
 *
 * @param onWarning receives what the old runtime would have repaired on its
 *   own: a torn write at the end of the log, which is skipped.
 */
export async function readLegacyLog(directory: string, onWarning: (message: string) => void): Promise<Map<number, LegacyShardState>> {
  const snapshotDirectory = join(directory, legacyNames.snapshots);
  const manifestPath = join(directory, legacyNames.manifest);
  const shards = await loadSnapshots(snapshotDirectory);
  const manifest = await readManifest(manifestPath);
  for (const shard of manifest?.snapshotShards ?? []) {
    if (!shards.has(shard)) {
      throw new StorageError(
        `the snapshot of shard ${shard} (${join(snapshotDirectory, `shard-${shard}-*.snap`)}) is missing, though ${manifestPath} says it has one: the log below it may be gone, so its state cannot be rebuilt. Refusing to convert the old log; restore the directory from a backup`,
      );
    }
  }
  const segments = await listedSegments(directory, manifest);
  if (manifest === undefined && (shards.size > 0 || (await holdsRecords(segments)))) {
    throw new StorageError(
      `storage directory ${directory} holds old log files but no ${manifestPath}: missing log segments or snapshots could not be detected. Refusing to convert the old log; restore the directory from a backup`,
    );
  }
  const lastSequence = await foldSegments(segments, shards, onWarning);
  for (const [shard, state] of shards) {
    if (state.snapshotSequence > lastSequence) {
      // A snapshot was written only once its sequence was durable in the log.
      throw new StorageError(
        `the log ends at sequence ${lastSequence} in ${segments.at(-1)?.path ?? `${directory} (no log segment)`}, but the snapshot of shard ${shard} is at sequence ${state.snapshotSequence}: records were cut from the log. Refusing to convert rather than lose them; restore the directory from a backup`,
      );
    }
  }
  return shards;
}

interface LegacyShard extends LegacyShardState {
  /** The sequence of the snapshot it started from (0 without one). */
  snapshotSequence: bigint;
}

async function loadSnapshots(snapshotDirectory: string): Promise<Map<number, LegacyShard>> {
  let names: string[];
  try {
    names = await readdir(snapshotDirectory);
  } catch (error) {
    if (fsErrorCode(error) === "ENOENT") return new Map();
    throw new StorageError(`cannot list snapshot directory ${snapshotDirectory}: ${describeFsError(error)}`, { cause: error });
  }
  const latest = new Map<number, { sequence: bigint; path: string }>();
  for (const name of names) {
    // `.snap.tmp` files are snapshots a crash interrupted: never installed, not needed.
    const match = SNAPSHOT_NAME.exec(name);
    if (match === null) continue;
    const shard = Number(match[1]);
    const sequence = BigInt(match[2] ?? "0");
    const seen = latest.get(shard);
    if (seen === undefined || sequence > seen.sequence) latest.set(shard, { sequence, path: join(snapshotDirectory, name) });
  }
  const shards = new Map<number, LegacyShard>();
  for (const [shard, { sequence, path }] of latest) {
    const buf = await readWhole(path, "snapshot");
    const content = decodeSnapshotFile(buf);
    if (typeof content === "string") {
      throw new StorageError(
        `snapshot ${path} is corrupt: ${content}. Refusing to convert rather than lose the state it holds; restore it from a backup`,
      );
    }
    if (content.shard !== shard || content.sequence !== sequence) {
      throw new StorageError(
        `snapshot ${path} holds shard ${content.shard} at sequence ${content.sequence}, not what its name says; restore it from a backup`,
      );
    }
    let state: LegacyShard;
    try {
      state = Object.assign(LegacyShardState.fromSnapshot(fromBinary(ShardSnapshotSchema, plain(content.snapshot))), {
        snapshotSequence: sequence,
      });
    } catch (error) {
      throw new StorageError(`snapshot ${path} cannot be decoded: ${String(error)}; restore it from a backup`, { cause: error });
    }
    shards.set(shard, state);
  }
  return shards;
}

async function readManifest(path: string): Promise<Manifest | undefined> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (error) {
    if (fsErrorCode(error) === "ENOENT") return undefined;
    throw new StorageError(`cannot read ${path}: ${describeFsError(error)}`, { cause: error });
  }
  const manifest = decodeManifest(buf);
  if (typeof manifest === "string") {
    throw new StorageError(
      `${path} is corrupt: ${manifest}. Refusing to convert the old log, as missing log segments or snapshots could not be detected; restore the directory from a backup`,
    );
  }
  return manifest;
}

interface SegmentFile {
  readonly path: string;
  readonly first: bigint;
}

/** The segments to read, oldest first: those the manifest lists and any newer (the active one may be unlisted). */
async function listedSegments(directory: string, manifest: Manifest | undefined): Promise<SegmentFile[]> {
  const files = await findLegacyFiles(directory);
  let found = files.segments.map((name) => ({ path: join(directory, name), first: BigInt(legacyNames.segment.exec(name)?.[1] ?? "0") }));
  found.sort((a, b) => (a.first < b.first ? -1 : a.first > b.first ? 1 : 0));
  if (manifest === undefined) return found;
  for (const first of manifest.segments) {
    if (!found.some((f) => f.first === first)) {
      throw new StorageError(
        `log segment ${join(directory, `wal-${first.toString().padStart(20, "0")}.log`)} is missing, though ${join(directory, legacyNames.manifest)} lists it: its records are lost. Refusing to convert the old log; restore the directory from a backup`,
      );
    }
  }
  // Older than the oldest listed: dropped by the old runtime, but a crash came before the unlink.
  const oldest = manifest.segments[0];
  if (oldest !== undefined) found = found.filter((f) => f.first >= oldest);
  return found;
}

async function holdsRecords(segments: readonly SegmentFile[]): Promise<boolean> {
  for (const { path } of segments) {
    try {
      if ((await stat(path)).size > 0) return true;
    } catch (error) {
      throw new StorageError(`cannot read log segment ${path}: ${describeFsError(error)}`, { cause: error });
    }
  }
  return false;
}

/** Applies every record after its shard's snapshot, in log order; returns the log's last sequence. */
async function foldSegments(
  segments: readonly SegmentFile[],
  shards: Map<number, LegacyShard>,
  onWarning: (message: string) => void,
): Promise<bigint> {
  let lastSequence = 0n;
  for (const [i, { path, first }] of segments.entries()) {
    const isLast = i === segments.length - 1;
    const buf = await readWhole(path, "log segment");
    let at = 0;
    while (at < buf.length) {
      const frame = checkFrame(buf, at, RECORD_HEADER_BYTES);
      if (!frame.ok) {
        if (!isLast) throw corruptSegment(path, at, frame.problem);
        // Only the last group can be torn: a later group start means this
        // frame was durable before, so it was damaged afterwards.
        const later = findGroupStart(buf, at + 1);
        if (later !== undefined) throw corruptSegment(path, at, `${frame.problem}, followed by durable records at byte ${later}`);
        onWarning(
          `log segment ${path}: skipped a torn write of ${buf.length - at} bytes at byte ${at} (the process stopped while writing it, so it was never acknowledged)`,
        );
        break;
      }
      const header = readRecordHeader(buf, frame);
      if (typeof header === "string") throw corruptSegment(path, at, header);
      if (header.sequence <= lastSequence) throw corruptSegment(path, at, `sequence ${header.sequence} does not follow ${lastSequence}`);
      lastSequence = header.sequence;
      let state = shards.get(header.shard);
      if (state === undefined) {
        state = Object.assign(new LegacyShardState(header.shard), { snapshotSequence: 0n });
        shards.set(header.shard, state);
      }
      if (header.sequence > state.snapshotSequence) {
        let record: ReturnType<typeof fromBinary<typeof LogRecordSchema>>;
        try {
          // A copy, so the state does not keep the whole segment alive through a few bytes fields.
          record = fromBinary(LogRecordSchema, new Uint8Array(buf.subarray(header.recordStart, frame.end)));
        } catch (error) {
          throw corruptSegment(path, at, `record cannot be decoded (${String(error)})`);
        }
        state.apply(record, header.sequence);
      }
      at = frame.end;
    }
    // An empty last segment's name is the next sequence, taken by no record.
    if (isLast && first - 1n > lastSequence) lastSequence = first - 1n;
  }
  return lastSequence;
}

function corruptSegment(path: string, offset: number, problem: string): StorageError {
  return new StorageError(
    `log segment ${path} is corrupt at byte ${offset}: ${problem}. Refusing to convert the old log rather than skip durable records; restore the directory from a backup`,
  );
}

async function readWhole(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (error) {
    throw new StorageError(`cannot read ${what} ${path}: ${describeFsError(error)}`, { cause: error });
  }
}

/** The same bytes as a plain Uint8Array: protobuf-es hands out `bytes` fields as views of its input. */
function plain(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
