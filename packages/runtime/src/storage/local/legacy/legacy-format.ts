// The on-disk format of the local backend before LMDB (Shoal up to commit
// c48f512): checksummed frames in log segments and snapshot files. Only the
// reader is kept, for the upgrade of old data directories (`legacy-upgrade.ts`);
// frozen: it reads what old runtimes wrote, and nothing writes it any more.
//
// Frame:   [u32 payload length][u32 crc32 of payload][payload]      (little endian)
// Log record payload:
//          [u8 format = 1][u8 flags][u32 shard][u64 sequence][LogRecord, protobuf binary]
// Snapshot file: one frame whose payload is
//          [u8 format = 1][u32 shard][u64 sequence][u64 epoch][ShardSnapshot, protobuf binary]
//
// The fixed headers keep what recovery needs to route and order records out of
// the protobuf, so opening a directory decodes only the fence records. A reader
// refuses a format byte it does not know rather than guessing: a newer runtime
// that changes a layout bumps it.
import { crc32 } from "node:zlib";

/** Length and checksum before every payload. */
export const FRAME_HEADER_BYTES = 8;
/** A payload longer than this is taken as damage. */
export const MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024;

/** Fixed header of a log record's payload, before the LogRecord bytes. */
export const RECORD_HEADER_BYTES = 14;
const RECORD_FORMAT = 1;
/**
 * Set on the first frame of each group commit. Groups are written one after
 * the other, each fsync'd before the next starts, so a valid group start after
 * a damaged frame proves the damaged frame had been made durable: that is
 * corruption, not a torn write.
 */
export const FLAG_GROUP_START = 1;
/** Set on the fence records `openShard` writes, so recovery finds epochs without decoding every record. */
export const FLAG_FENCE = 2;

const SNAPSHOT_HEADER_BYTES = 21;
const SNAPSHOT_FORMAT = 1;

/** A frame that passed its checks: the payload is `buf[payloadStart, end)`. */
export interface GoodFrame {
  readonly ok: true;
  readonly payloadStart: number;
  readonly end: number;
}

/** A frame that did not: `problem` says why, for the error message. */
export interface BadFrame {
  readonly ok: false;
  readonly problem: string;
}

/** Checks the frame at `offset`: complete, of a plausible length, checksum right. */
export function checkFrame(buf: Buffer, offset: number, minPayload: number): GoodFrame | BadFrame {
  const available = buf.length - offset;
  if (available < FRAME_HEADER_BYTES) {
    return { ok: false, problem: `incomplete frame header (${available} of ${FRAME_HEADER_BYTES} bytes)` };
  }
  const length = buf.readUInt32LE(offset);
  if (length < minPayload || length > MAX_PAYLOAD_BYTES) {
    return { ok: false, problem: `invalid frame length ${length}` };
  }
  const payloadStart = offset + FRAME_HEADER_BYTES;
  const end = payloadStart + length;
  if (end > buf.length) {
    return { ok: false, problem: `incomplete frame (${buf.length - payloadStart} of ${length} payload bytes)` };
  }
  if (crc32(buf.subarray(payloadStart, end)) !== buf.readUInt32LE(offset + 4)) {
    return { ok: false, problem: "checksum mismatch" };
  }
  return { ok: true, payloadStart, end };
}

/** The fixed header of a log record frame that passed `checkFrame`. */
export interface RecordHeader {
  readonly flags: number;
  readonly shard: number;
  readonly sequence: bigint;
  /** Where the LogRecord bytes start. */
  readonly recordStart: number;
}

/** Reads a record header, or returns a problem when its format is unknown. */
export function readRecordHeader(buf: Buffer, frame: GoodFrame): RecordHeader | string {
  const p = frame.payloadStart;
  const format = buf.readUInt8(p);
  if (format !== RECORD_FORMAT) {
    return `unknown record format ${format} (written by a newer Shoal runtime?)`;
  }
  return {
    flags: buf.readUInt8(p + 1),
    shard: buf.readUInt32LE(p + 2),
    sequence: buf.readBigUInt64LE(p + 6),
    recordStart: p + RECORD_HEADER_BYTES,
  };
}

/**
 * Looks for a valid group-start frame at any byte offset from `from` on.
 * Only used after a damaged frame in the last segment, where frame boundaries
 * cannot be trusted, so it tries every offset; the cheap header tests run
 * before the checksum, which keeps the scan fast on garbage.
 */
export function findGroupStart(buf: Buffer, from: number): number | undefined {
  const last = buf.length - FRAME_HEADER_BYTES - RECORD_HEADER_BYTES;
  for (let at = from; at <= last; at++) {
    const p = at + FRAME_HEADER_BYTES;
    if (buf[p] !== RECORD_FORMAT || ((buf[p + 1] ?? 0) & FLAG_GROUP_START) === 0) continue;
    const length = buf.readUInt32LE(at);
    if (length < RECORD_HEADER_BYTES || p + length > buf.length) continue;
    if (checkFrame(buf, at, RECORD_HEADER_BYTES).ok) return at;
  }
  return undefined;
}

/** A snapshot file's content after its checks. */
export interface SnapshotFile {
  readonly shard: number;
  readonly sequence: bigint;
  /** The epoch of the owner that wrote it: epochs must survive the truncation of their fence records. */
  readonly epoch: bigint;
  readonly snapshot: Uint8Array;
}

/** Checks and unframes a snapshot file, or returns what is wrong with it. */
export function decodeSnapshotFile(buf: Buffer): SnapshotFile | string {
  const frame = checkFrame(buf, 0, SNAPSHOT_HEADER_BYTES);
  if (!frame.ok) return frame.problem;
  if (frame.end !== buf.length) return `${buf.length - frame.end} unexpected bytes after the snapshot`;
  const p = frame.payloadStart;
  const format = buf.readUInt8(p);
  if (format !== SNAPSHOT_FORMAT) return `unknown snapshot format ${format} (written by a newer Shoal runtime?)`;
  return {
    shard: buf.readUInt32LE(p + 1),
    sequence: buf.readBigUInt64LE(p + 5),
    epoch: buf.readBigUInt64LE(p + 13),
    snapshot: buf.subarray(p + SNAPSHOT_HEADER_BYTES, frame.end),
  };
}

// Manifest file: one frame whose payload is
//          [u8 format = 1][u32 segment count][u64 first sequence]...[u32 shard count][u32 shard]...
const MANIFEST_FORMAT = 1;

/**
 * What the directory must hold, for the checks at open that a missing file
 * would otherwise pass silently: the log segments, by first sequence, and the
 * shards that have a snapshot (a shard keeps one from its first on).
 */
export interface Manifest {
  readonly segments: readonly bigint[];
  readonly snapshotShards: readonly number[];
}

/** Checks and decodes a manifest file, or returns what is wrong with it. */
export function decodeManifest(buf: Buffer): Manifest | string {
  const frame = checkFrame(buf, 0, 9);
  if (!frame.ok) return frame.problem;
  if (frame.end !== buf.length) return `${buf.length - frame.end} unexpected bytes after the manifest`;
  let p = frame.payloadStart;
  const format = buf.readUInt8(p);
  if (format !== MANIFEST_FORMAT) return `unknown manifest format ${format} (written by a newer Shoal runtime?)`;
  p += 1;
  const segments: bigint[] = [];
  const segmentCount = buf.readUInt32LE(p);
  p += 4;
  if (p + 8 * segmentCount + 4 > frame.end) return "segment list longer than the file";
  for (let i = 0; i < segmentCount; i++, p += 8) segments.push(buf.readBigUInt64LE(p));
  const shardCount = buf.readUInt32LE(p);
  p += 4;
  if (p + 4 * shardCount !== frame.end) return "shard list does not fill the file";
  const snapshotShards: number[] = [];
  for (let i = 0; i < shardCount; i++, p += 4) snapshotShards.push(buf.readUInt32LE(p));
  return { segments, snapshotShards };
}
