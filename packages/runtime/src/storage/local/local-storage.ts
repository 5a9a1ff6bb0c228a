import { constants } from "node:fs";
import { type FileHandle, mkdir, open, readdir, readFile, rename, stat, unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { type LogRecord, LogRecordSchema, type ShardSnapshot, ShardSnapshotSchema } from "@shoal/sdk/internal";
import { defaults as nodeDefaults } from "../../config/defaults.js";
import {
  type AppendResult,
  encodeRecords,
  FencedError,
  type RecoveredShard,
  type SequencedRecord,
  type ShardLog,
  type StorageBackend,
  StorageError,
  type StorageStats,
} from "../storage.js";
import { checkShardNumber, checkSnapshot } from "../storage-checks.js";
import { type DirectoryLock, lockDirectory } from "./directory-lock.js";
import { describeFsError, fsErrorCode } from "./fs-errors.js";
import {
  checkFrame,
  decodeManifest,
  decodeSnapshotFile,
  encodeManifest,
  encodeSnapshotFile,
  FLAG_FENCE,
  FLAG_GROUP_START,
  findGroupStart,
  MAX_PAYLOAD_BYTES,
  RECORD_HEADER_BYTES,
  readRecordHeader,
  recordFrameBytes,
  writeRecordFrame,
} from "./local-format.js";

/** Options of {@link createLocalStorage}. */
export interface LocalStorageOptions {
  /**
   * The directory for the log segments, the `snapshots/` folder and the
   * `LOCK` file; created when missing. Required (the runtime passes `./.shoal`).
   */
  directory: string;
  /**
   * Whether `durable` waits for fsync (and new files and snapshots are
   * fsync'd, with their directories). Default `true`. With `false` records
   * survive a crash of the process but not of the machine, and a machine
   * crash can leave the directory unreadable: for tests and benchmarks only.
   */
  fsync?: boolean;
  /**
   * Size at which the active log segment is closed and a new one started.
   * Default 16 MiB. Space is given back a whole segment at a time, once
   * snapshots cover all its records.
   */
  segmentBytes?: number;
  /**
   * Upper bound of one group commit's write, in bytes. Default 4 MiB. An
   * append larger than this is written as a group of its own; appends are
   * never split across groups.
   */
  maxGroupBytes?: number;
  /**
   * How long the first append to an idle log waits for more to join its
   * group, in milliseconds. Default 0: the write starts at once, and the
   * appends arriving while it runs form the next group, which is what makes
   * groups large under load.
   */
  maxGroupDelayMs?: number;
  /**
   * Receives what the open repaired on its own, such as a torn write cut off
   * the end of the log (with the bytes dropped). Default: `process.emitWarning`.
   */
  onWarning?: (message: string) => void;
}

const defaults = {
  fsync: nodeDefaults.storage.fsync,
  // Small enough that a segment fills, and can be deleted once snapshots
  // cover it, well within the snapshot budget (config/defaults.ts).
  segmentBytes: 16 * 1024 * 1024,
  maxGroupBytes: 4 * 1024 * 1024,
  maxGroupDelayMs: 0,
  onWarning: (message: string) => process.emitWarning(message, "ShoalStorageWarning"),
};

/**
 * Opens (creating it if needed) a storage directory on the local disk: the
 * default backend of a single-process runtime.
 *
 * - One write-ahead log for all the shards of the process, in segment files
 *   `wal-<first sequence>.log`: a group commit writes the appends of every
 *   shard made meanwhile with one write and one fsync. Sequences are global
 *   to the directory.
 * - Snapshots in `snapshots/shard-<n>-<sequence>.snap`, written to a temporary
 *   file, fsync'd and renamed; the latest is kept. A segment is deleted once
 *   the snapshots of all shards with records in it cover them.
 * - At open: a damaged frame at the end of the last segment is a write torn
 *   by a crash, and is cut off (reported to `onWarning` with the bytes
 *   dropped); damage anywhere else, or in a snapshot, fails the open with a
 *   `StorageError` naming the file (and byte offset) rather than losing
 *   records silently.
 * - A `MANIFEST` lists the segments and the shards that have a snapshot: a
 *   listed file that is missing, a log that ends before a snapshot's
 *   sequence, or data without a manifest fails the open the same way.
 * - An OS lock on the `LOCK` file keeps a second process out; it goes with
 *   its holder, however that dies (see `directory-lock.ts`).
 *
 * Errors are reported, never printed: the open rejects with `StorageError`
 * naming the directory and the OS error; a failed write or fsync rejects the
 * `durable` of its group and of the groups queued behind it (the handles
 * whose records were lost then refuse appends until their shard is opened
 * again), cuts the segment back to its last durable frame and carries on with
 * later appends.
 */
export async function createLocalStorage(options: LocalStorageOptions): Promise<StorageBackend> {
  const settings = resolveOptions(options);
  const directory = resolve(options.directory);
  try {
    await makeDirectory(directory);
  } catch (error) {
    throw new StorageError(`cannot create storage directory ${directory}: ${describeFsError(error)}`, {
      cause: error,
    });
  }
  const lock = await lockDirectory(directory);
  try {
    return await openLocked(directory, settings, lock);
  } catch (error) {
    await lock.release();
    throw error;
  }
}

type Settings = Required<Omit<LocalStorageOptions, "directory">>;

function resolveOptions(options: LocalStorageOptions): Settings {
  if (typeof options.directory !== "string" || options.directory === "") {
    throw new StorageError("local storage: option directory is required (e.g. ./.shoal)");
  }
  const settings = {
    fsync: options.fsync ?? defaults.fsync,
    segmentBytes: options.segmentBytes ?? defaults.segmentBytes,
    maxGroupBytes: options.maxGroupBytes ?? defaults.maxGroupBytes,
    maxGroupDelayMs: options.maxGroupDelayMs ?? defaults.maxGroupDelayMs,
    onWarning: options.onWarning ?? defaults.onWarning,
  };
  for (const key of ["segmentBytes", "maxGroupBytes"] as const) {
    if (!Number.isSafeInteger(settings[key]) || settings[key] <= 0) {
      throw new StorageError(`local storage: option ${key} must be a positive integer, got ${settings[key]}`);
    }
  }
  if (!Number.isFinite(settings.maxGroupDelayMs) || settings.maxGroupDelayMs < 0) {
    throw new StorageError(`local storage: option maxGroupDelayMs must be a number >= 0, got ${settings.maxGroupDelayMs}`);
  }
  return settings;
}

const SEGMENT_NAME = /^wal-(\d{20})\.log$/;
const SNAPSHOT_NAME = /^shard-(\d+)-(\d{20})\.snap$/;

function segmentName(firstSequence: bigint): string {
  return `wal-${firstSequence.toString().padStart(20, "0")}.log`;
}

function snapshotName(shard: number, sequence: bigint): string {
  return `shard-${shard}-${sequence.toString().padStart(20, "0")}.snap`;
}

/** A log segment file. */
interface Segment {
  readonly path: string;
  /** The sequence in its name: its first record's, or the next one when it was started. */
  readonly first: bigint;
  /** Bytes of complete, durable frames: where the next group goes. */
  size: number;
  /** Highest sequence per shard with records here: the segment goes once every shard's snapshot covers its entry. */
  readonly maxSequence: Map<number, bigint>;
}

/** Where some of a shard's durable records are: frames of one segment. */
interface IndexRun {
  readonly segment: Segment;
  /** Offset and length of each frame, flattened: [offset, length, offset, length, ...]. */
  readonly frames: number[];
  lastSequence: bigint;
}

interface ShardState {
  /** The highest epoch handed out or found on disk. */
  epoch: bigint;
  owner: string;
  snapshot: { readonly sequence: bigint; readonly path: string } | undefined;
  /** Where the durable records after the snapshot are, in log order. */
  index: IndexRun[];
  /**
   * The records read at open plus those made durable since, until the first
   * `recover()` takes them: at startup every shard recovers once, and this
   * spares each of them re-reading the log. Later recoveries use `index`.
   */
  unrecovered: { readonly sequence: bigint; readonly bytes: Uint8Array }[] | undefined;
  /** Serializes this shard's snapshot writes and recoveries. */
  queue: Promise<unknown>;
}

interface QueuedRecord {
  readonly log: LocalShardLog;
  readonly sequence: bigint;
  readonly bytes: Uint8Array;
  readonly fence: boolean;
}

/** Appends written together: one write, one fsync, one promise. */
interface Group {
  readonly records: QueuedRecord[];
  /** Bytes of the group's frames. */
  bytes: number;
  readonly promise: Promise<void>;
  readonly resolve: () => void;
  readonly reject: (error: StorageError) => void;
}

function newShardState(): ShardState {
  return { epoch: 0n, owner: "", snapshot: undefined, index: [], unrecovered: [], queue: Promise.resolve() };
}

function newGroup(): Group {
  let resolveGroup!: () => void;
  let rejectGroup!: (error: StorageError) => void;
  const promise = new Promise<void>((res, rej) => {
    resolveGroup = res;
    rejectGroup = rej;
  });
  // The group's failure also reaches its handles (they refuse later appends),
  // so a caller that dropped a `durable` must not crash the process with an
  // unhandled rejection; callers that await it still get the error.
  promise.catch(() => undefined);
  return { records: [], bytes: 0, promise, resolve: resolveGroup, reject: rejectGroup };
}

function addToIndex(state: ShardState, segment: Segment, offset: number, length: number, sequence: bigint): void {
  const run = state.index.at(-1);
  if (run !== undefined && run.segment === segment) {
    run.frames.push(offset, length);
    run.lastSequence = sequence;
  } else {
    state.index.push({ segment, frames: [offset, length], lastSequence: sequence });
  }
}

function corruptSegment(path: string, offset: number, problem: string): StorageError {
  return new StorageError(
    `log segment ${path} is corrupt at byte ${offset}: ${problem}. Refusing to open rather than skip durable records; restore the directory from a backup`,
  );
}

async function openLocked(directory: string, settings: Settings, lock: DirectoryLock): Promise<StorageBackend> {
  const snapshotDirectory = join(directory, "snapshots");
  await fsStep(`cannot create snapshot directory ${snapshotDirectory}`, async () => {
    await makeDirectory(snapshotDirectory);
    // Makes the entries of `snapshots/` (and of new segments below) durable.
    if (settings.fsync) await fsyncDirectory(directory);
  });
  const shards = new Map<number, ShardState>();
  await loadSnapshots(snapshotDirectory, shards);
  const manifestPath = join(directory, "MANIFEST");
  const manifest = await readManifest(manifestPath);
  for (const shard of manifest?.snapshotShards ?? []) {
    if (shards.get(shard)?.snapshot === undefined) {
      throw new StorageError(
        `the snapshot of shard ${shard} (${join(snapshotDirectory, `shard-${shard}-*.snap`)}) is missing, though ${manifestPath} says it has one: the log below it may be gone, so its state cannot be rebuilt. Refusing to open; restore the directory from a backup`,
      );
    }
  }
  // Without one, only a directory that never held a record may open (a crash
  // can come between creating the first segment and the first manifest).
  if (manifest === undefined && (shards.size > 0 || (await holdsRecords(directory)))) {
    throw new StorageError(
      `storage directory ${directory} holds data but no ${manifestPath} (deleted, or written by an older Shoal runtime): missing log segments or snapshots could not be detected. Refusing to open; restore the directory from a backup`,
    );
  }
  const { segments, lastSequence } = await scanLog(directory, shards, settings, manifest?.segments);

  let next = lastSequence;
  for (const state of shards.values()) {
    const snapshot = state.snapshot;
    if (snapshot !== undefined && snapshot.sequence > lastSequence) {
      // A snapshot is written only once its sequence is durable in the log.
      const end = segments.at(-1)?.path ?? `${directory} (no log segment)`;
      throw new StorageError(
        `the log ends at sequence ${lastSequence} in ${end}, but snapshot ${snapshot.path} is at sequence ${snapshot.sequence}: records were cut from the log. Refusing to open rather than lose them; restore the directory from a backup`,
      );
    }
    if (snapshot !== undefined && snapshot.sequence > next) next = snapshot.sequence;
  }
  next += 1n;

  let active: FileHandle;
  const last = segments.at(-1);
  if (last === undefined) {
    const path = join(directory, segmentName(next));
    active = await fsStep(`cannot create log segment ${path}`, () => createSegmentFile(path, directory, settings));
    segments.push({ path, first: next, size: 0, maxSequence: new Map() });
  } else {
    active = await fsStep(`cannot open log segment ${last.path}`, () => open(last.path, "r+"));
  }
  const storage = new LocalStorage(directory, snapshotDirectory, manifestPath, settings, lock, shards, segments, active, next);
  try {
    await storage.saveManifest();
  } catch (error) {
    await active.close().catch(() => undefined);
    throw error;
  }
  await storage.dropCoveredSegments();
  return storage;
}

async function holdsRecords(directory: string): Promise<boolean> {
  const names = await fsStep(`cannot list storage directory ${directory}`, () => readdir(directory));
  for (const name of names.filter((n) => SEGMENT_NAME.test(n))) {
    const path = join(directory, name);
    if ((await fsStep(`cannot read log segment ${path}`, () => stat(path))).size > 0) return true;
  }
  return false;
}

async function readManifest(path: string) {
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
      `${path} is corrupt: ${manifest}. Refusing to open, as missing log segments or snapshots could not be detected; restore the directory from a backup`,
    );
  }
  return manifest;
}

async function loadSnapshots(snapshotDirectory: string, shards: Map<number, ShardState>): Promise<void> {
  const names = await fsStep(`cannot list snapshot directory ${snapshotDirectory}`, () => readdir(snapshotDirectory));
  const byShard = new Map<number, { sequence: bigint; path: string }[]>();
  for (const name of names) {
    const path = join(snapshotDirectory, name);
    if (name.endsWith(".snap.tmp")) {
      // A snapshot whose write a crash interrupted: never installed, not needed.
      await unlink(path).catch(() => undefined);
      continue;
    }
    const match = SNAPSHOT_NAME.exec(name);
    if (match === null) continue;
    const shard = Number(match[1]);
    const list = byShard.get(shard) ?? [];
    list.push({ sequence: BigInt(match[2] ?? "0"), path });
    byShard.set(shard, list);
  }
  for (const [shard, list] of byShard) {
    list.sort((a, b) => (a.sequence < b.sequence ? 1 : a.sequence > b.sequence ? -1 : 0));
    const [latest, ...older] = list;
    if (latest === undefined) continue;
    const content = await readSnapshotFile(latest.path, shard, latest.sequence);
    const state = newShardState();
    state.snapshot = latest;
    state.epoch = content.epoch;
    shards.set(shard, state);
    // Left behind when a crash came between installing a snapshot and
    // deleting its predecessor; the newer one is complete (it was renamed).
    for (const old of older) await unlink(old.path).catch(() => undefined);
  }
}

async function readSnapshotFile(path: string, shard: number, sequence: bigint) {
  const buf = await fsStep(`cannot read snapshot ${path}`, () => readFile(path));
  const content = decodeSnapshotFile(buf);
  if (typeof content === "string") {
    throw new StorageError(
      `snapshot ${path} is corrupt: ${content}. Refusing to open rather than lose the state it holds; restore it from a backup`,
    );
  }
  if (content.shard !== shard || content.sequence !== sequence) {
    throw new StorageError(
      `snapshot ${path} holds shard ${content.shard} at sequence ${content.sequence}, not what its name says; restore it from a backup`,
    );
  }
  return content;
}

async function scanLog(
  directory: string,
  shards: Map<number, ShardState>,
  settings: Settings,
  listed: readonly bigint[] | undefined,
): Promise<{ segments: Segment[]; lastSequence: bigint }> {
  const names = await fsStep(`cannot list storage directory ${directory}`, () => readdir(directory));
  let found = names
    .map((name) => ({ name, match: SEGMENT_NAME.exec(name) }))
    .filter((f) => f.match !== null)
    .map((f) => ({ name: f.name, first: BigInt(f.match?.[1] ?? "0") }))
    .sort((a, b) => (a.first < b.first ? -1 : a.first > b.first ? 1 : 0));
  if (listed !== undefined) {
    for (const first of listed) {
      if (!found.some((f) => f.first === first)) {
        throw new StorageError(
          `log segment ${join(directory, segmentName(first))} is missing, though ${join(directory, "MANIFEST")} lists it: its records are lost. Refusing to open; restore the directory from a backup`,
        );
      }
    }
    // Older than the oldest listed: dropped, but a crash came before the unlink.
    const oldest = listed[0];
    const dropped = found.filter((f) => oldest !== undefined && f.first < oldest);
    for (const f of dropped) await unlink(join(directory, f.name)).catch(() => undefined);
    found = found.filter((f) => !dropped.includes(f));
  }
  const segments: Segment[] = [];
  let lastSequence = 0n;
  for (const [i, { name, first }] of found.entries()) {
    const isLast = i === found.length - 1;
    const path = join(directory, name);
    const buf = await fsStep(`cannot read log segment ${path}`, () => readFile(path));
    const segment: Segment = { path, first, size: 0, maxSequence: new Map() };
    let at = 0;
    while (at < buf.length) {
      const frame = checkFrame(buf, at, RECORD_HEADER_BYTES);
      if (!frame.ok) {
        if (!isLast) throw corruptSegment(path, at, frame.problem);
        // Only the last group can be torn: a later group start means this
        // frame was durable before, so it was damaged afterwards.
        const later = findGroupStart(buf, at + 1);
        if (later !== undefined) {
          throw corruptSegment(path, at, `${frame.problem}, followed by durable records at byte ${later}`);
        }
        break;
      }
      const header = readRecordHeader(buf, frame);
      if (typeof header === "string") throw corruptSegment(path, at, header);
      if (header.sequence <= lastSequence) {
        throw corruptSegment(path, at, `sequence ${header.sequence} does not follow ${lastSequence}`);
      }
      lastSequence = header.sequence;
      let state = shards.get(header.shard);
      if (state === undefined) {
        state = newShardState();
        shards.set(header.shard, state);
      }
      if ((header.flags & FLAG_FENCE) !== 0) {
        let record: LogRecord;
        try {
          record = fromBinary(LogRecordSchema, buf.subarray(header.recordStart, frame.end));
        } catch (error) {
          throw corruptSegment(path, at, `fence record cannot be decoded (${String(error)})`);
        }
        if (record.kind.case === "fence" && record.kind.value.epoch >= state.epoch) {
          state.epoch = record.kind.value.epoch;
          state.owner = record.kind.value.owner;
        }
      }
      segment.maxSequence.set(header.shard, header.sequence);
      if (header.sequence > (state.snapshot?.sequence ?? 0n)) {
        addToIndex(state, segment, at, frame.end - at, header.sequence);
        // A copy, so the segment's buffer is not kept alive by a few records.
        state.unrecovered?.push({
          sequence: header.sequence,
          bytes: new Uint8Array(buf.subarray(header.recordStart, frame.end)),
        });
      }
      at = frame.end;
    }
    if (at < buf.length) {
      settings.onWarning(
        `log segment ${path}: cut off a torn write of ${buf.length - at} bytes at byte ${at} (the process stopped while writing it, so it was never acknowledged)`,
      );
      // A torn write: cut it off before anything is appended after it.
      await fsStep(`cannot cut the torn end off log segment ${path}`, async () => {
        const file = await open(path, "r+");
        try {
          await file.truncate(at);
          if (settings.fsync) await file.datasync();
        } finally {
          await file.close();
        }
      });
    }
    segment.size = at;
    segments.push(segment);
    // An empty last segment's name is the next sequence, taken by no record.
    if (isLast && first - 1n > lastSequence) lastSequence = first - 1n;
  }
  return { segments, lastSequence };
}

class LocalStorage implements StorageBackend {
  readonly name = "local";
  private readonly counters = { groups: 0, records: 0, bytes: 0 };
  /** Groups waiting to be written, oldest first; appends join the last. */
  private readonly queue: Group[] = [];
  private inFlight: Group | undefined;
  private flushing = false;
  private closing: Promise<void> | undefined;
  /** Set when a segment could not be cut back after a failed write: nothing more can be written safely. */
  private broken: StorageError | undefined;
  /** The highest sequence written and fsync'd. */
  private durableSequence: bigint;
  /** Serializes manifest writes. */
  private manifestQueue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly directory: string,
    private readonly snapshotDirectory: string,
    private readonly manifestPath: string,
    private readonly settings: Settings,
    private readonly lock: DirectoryLock,
    private readonly shards: Map<number, ShardState>,
    /** Oldest first; the last is the active one, appended to and never deleted. */
    private segments: Segment[],
    private active: FileHandle,
    private nextSequence: bigint,
  ) {
    this.durableSequence = nextSequence - 1n;
  }

  async openShard(shard: number, owner: string): Promise<ShardLog> {
    this.checkUsable();
    checkShardNumber(shard);
    let state = this.shards.get(shard);
    if (state === undefined) {
      state = newShardState();
      this.shards.set(shard, state);
    }
    // Fence at once, before anything is awaited: from here on the earlier
    // handles' appends are refused, and those accepted before are ordered
    // ahead of the fence record, so they are durable when this resolves.
    state.epoch += 1n;
    state.owner = owner;
    const log = new LocalShardLog(this, state, shard, state.epoch);
    const fence = create(LogRecordSchema, {
      kind: { case: "fence", value: { owner, epoch: state.epoch } },
      writtenAtMs: BigInt(Date.now()),
    });
    await this.enqueue(log, [toBinary(LogRecordSchema, fence)], true).durable;
    return log;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.settled();
      await Promise.all([...this.shards.values()].map((s) => s.queue.catch(() => undefined)));
      await this.manifestQueue;
      try {
        await this.active.close();
      } finally {
        await this.lock.release();
      }
    })();
    return this.closing;
  }

  stats(): StorageStats {
    return { ...this.counters };
  }

  checkUsable(): void {
    if (this.closing !== undefined) throw new StorageError(`storage directory ${this.directory} is closed`);
    if (this.broken !== undefined) throw this.broken;
  }

  /** Assigns sequences and queues records for the next group commit. */
  enqueue(log: LocalShardLog, encoded: readonly Uint8Array[], fence: boolean): AppendResult {
    this.checkUsable();
    if (encoded.length === 0) return { lastSequence: this.nextSequence - 1n, durable: this.settled() };
    let bytes = 0;
    for (const record of encoded) {
      if (record.length + RECORD_HEADER_BYTES > MAX_PAYLOAD_BYTES) {
        throw new StorageError(
          `shard ${log.shard}: a record of ${record.length} bytes exceeds the log's limit of ${MAX_PAYLOAD_BYTES - RECORD_HEADER_BYTES} bytes`,
        );
      }
      bytes += recordFrameBytes(record.length);
    }
    let group = this.queue.at(-1);
    if (group === undefined || group.bytes + bytes > this.settings.maxGroupBytes) {
      group = newGroup();
      this.queue.push(group);
    }
    for (const record of encoded) {
      group.records.push({ log, sequence: this.nextSequence, bytes: record, fence });
      this.nextSequence += 1n;
    }
    group.bytes += bytes;
    log.lastDurable = group.promise;
    this.scheduleFlush();
    return { lastSequence: this.nextSequence - 1n, durable: group.promise };
  }

  /** Resolves once every group queued so far is written or has failed. */
  settled(): Promise<void> {
    const last = this.queue.at(-1) ?? this.inFlight;
    return last === undefined ? Promise.resolve() : last.promise.catch(() => undefined);
  }

  private scheduleFlush(): void {
    if (this.flushing) return;
    this.flushing = true;
    const run = () => void this.flush();
    // setImmediate rather than a microtask: appends made by other I/O
    // callbacks of this turn of the event loop join the group.
    if (this.settings.maxGroupDelayMs > 0) setTimeout(run, this.settings.maxGroupDelayMs);
    else setImmediate(run);
  }

  private async flush(): Promise<void> {
    for (let group = this.queue.shift(); group !== undefined; group = this.queue.shift()) {
      this.inFlight = group;
      await this.writeGroup(group);
      this.inFlight = undefined;
    }
    this.flushing = false;
  }

  private async writeGroup(group: Group): Promise<void> {
    const first = group.records[0];
    const last = group.records.at(-1);
    if (first === undefined || last === undefined) return group.resolve();
    if (this.broken !== undefined) return this.fail(group, this.broken);
    try {
      await this.rollIfFull(first.sequence);
    } catch (error) {
      return this.fail(group, error as StorageError);
    }
    const segment = this.segments.at(-1) as Segment;
    const at = segment.size;
    const buf = Buffer.allocUnsafe(group.bytes);
    let offset = 0;
    for (const [i, r] of group.records.entries()) {
      const flags = (i === 0 ? FLAG_GROUP_START : 0) | (r.fence ? FLAG_FENCE : 0);
      offset = writeRecordFrame(buf, offset, flags, r.log.shard, r.sequence, r.bytes);
    }
    try {
      await writeAll(this.active, buf, at);
      if (this.settings.fsync) await this.active.datasync();
    } catch (error) {
      this.fail(
        group,
        new StorageError(
          `writing log segment ${segment.path} failed: ${describeFsError(error)}; records ${first.sequence} to ${last.sequence} are not durable`,
          { cause: error },
        ),
      );
      await this.cutBack(segment, at);
      return;
    }
    segment.size = at + buf.length;
    let frameAt = at;
    for (const r of group.records) {
      const length = recordFrameBytes(r.bytes.length);
      const state = r.log.state;
      segment.maxSequence.set(r.log.shard, r.sequence);
      addToIndex(state, segment, frameAt, length, r.sequence);
      state.unrecovered?.push({ sequence: r.sequence, bytes: r.bytes });
      frameAt += length;
    }
    this.durableSequence = last.sequence;
    this.counters.groups += 1;
    this.counters.records += group.records.length;
    this.counters.bytes += buf.length;
    group.resolve();
  }

  /**
   * Fails a group and every group queued behind it: those may hold records
   * that depend on the lost ones (a shard's next commit), so none may become
   * durable. Their handles refuse further appends until the shard is opened
   * again and rebuilt from what is durable.
   */
  private fail(group: Group, error: StorageError): void {
    const failed = [group, ...this.queue.splice(0)];
    for (const [i, g] of failed.entries()) {
      const reason = i === 0 ? error : new StorageError(`not written: an earlier group commit failed: ${error.message}`, { cause: error });
      for (const r of g.records) r.log.failure ??= reason;
      g.reject(reason);
    }
  }

  /**
   * After a failed write the segment may end in a partial group: cut it back
   * to the last durable frame, so later groups do not land after garbage
   * (which the next open would take for corruption).
   */
  private async cutBack(segment: Segment, size: number): Promise<void> {
    try {
      await this.active.truncate(size);
      if (this.settings.fsync) await this.active.datasync();
    } catch (error) {
      this.broken = new StorageError(
        `log segment ${segment.path} could not be cut back to its last durable frame after a failed write (${describeFsError(error)}); close and reopen storage directory ${this.directory}`,
        { cause: error },
      );
    }
  }

  /** Starts a new segment, named after the group's first sequence, when the active one is full. */
  private async rollIfFull(firstSequence: bigint): Promise<void> {
    const current = this.segments.at(-1) as Segment;
    if (current.size < this.settings.segmentBytes) return;
    const path = join(this.directory, segmentName(firstSequence));
    const file = await fsStep(`cannot start log segment ${path}`, () => createSegmentFile(path, this.directory, this.settings));
    const previous = this.active;
    this.active = file;
    this.segments.push({ path, first: firstSequence, size: 0, maxSequence: new Map() });
    // Everything in it was fsync'd with its group.
    await previous.close().catch(() => undefined);
    // Unlisted, the new segment is still accepted at open (it is the newest);
    // listed, its loss is detected.
    await this.saveManifest();
  }

  /**
   * Writes `MANIFEST` from the current segments and snapshots: to a temporary
   * file, fsync'd and renamed, one write at a time, each with the state of
   * when it starts.
   */
  saveManifest(): Promise<void> {
    const write = () => {
      const content = encodeManifest({
        segments: this.segments.map((s) => s.first),
        snapshotShards: [...this.shards].filter(([, state]) => state.snapshot !== undefined).map(([shard]) => shard),
      });
      return fsStep(`writing ${this.manifestPath} failed`, async () => {
        const temporary = `${this.manifestPath}.tmp`;
        await writeWholeFile(temporary, content, this.settings.fsync);
        await rename(temporary, this.manifestPath);
        if (this.settings.fsync) await fsyncDirectory(this.directory);
      });
    };
    const result = this.manifestQueue.then(write, write);
    this.manifestQueue = result.catch(() => undefined);
    return result;
  }

  /**
   * Deletes the segments whose records are all covered by their shards'
   * snapshots. Not fsync'd: a deletion lost in a crash leaves a segment the
   * next open reads and deletes again.
   */
  async dropCoveredSegments(): Promise<void> {
    const active = this.segments.at(-1);
    const covered = (segment: Segment) => {
      for (const [shard, max] of segment.maxSequence) {
        const snapshot = this.shards.get(shard)?.snapshot;
        if (snapshot === undefined || snapshot.sequence < max) return false;
      }
      return true;
    };
    const drop = this.segments.filter((s) => s !== active && covered(s));
    if (drop.length === 0) return;
    this.segments = this.segments.filter((s) => !drop.includes(s));
    // Unlisted first, so that a listed segment that is missing is always damage.
    // If that fails they stay, listed or older than the oldest listed (which
    // the next open deletes).
    const unlisted = await this.saveManifest().then(
      () => true,
      () => false,
    );
    if (!unlisted) return;
    // A failed unlink leaves a segment behind that the next open drops.
    await Promise.all(drop.map((segment) => unlink(segment.path).catch(() => undefined)));
  }

  /** Runs `task` after the shard's earlier snapshot writes and recoveries. */
  private serialize<T>(state: ShardState, task: () => Promise<T>): Promise<T> {
    const result = state.queue.then(task, task);
    state.queue = result.catch(() => undefined);
    return result;
  }

  async recover(log: LocalShardLog): Promise<RecoveredShard> {
    this.checkUsable();
    return this.serialize(log.state, async () => {
      // Records appended before this call are written (or failed) first.
      await this.settled();
      const state = log.state;
      const stored = state.snapshot;
      let snapshot: ShardSnapshot | undefined;
      if (stored !== undefined) {
        const content = await readSnapshotFile(stored.path, log.shard, stored.sequence);
        try {
          snapshot = fromBinary(ShardSnapshotSchema, plain(content.snapshot));
        } catch (error) {
          throw new StorageError(`snapshot ${stored.path} cannot be decoded: ${String(error)}`, { cause: error });
        }
      }
      const floor = stored?.sequence ?? 0n;
      const cached = state.unrecovered;
      if (cached === undefined) return { snapshot, records: await this.readIndex(log.shard, state.index, floor) };
      state.unrecovered = undefined;
      const records: SequencedRecord[] = [];
      for (const r of cached) {
        if (r.sequence <= floor) continue;
        try {
          records.push({ sequence: r.sequence, record: fromBinary(LogRecordSchema, r.bytes) });
        } catch (error) {
          throw new StorageError(`shard ${log.shard}: record ${r.sequence} cannot be decoded: ${String(error)}`, {
            cause: error,
          });
        }
      }
      return { snapshot, records };
    });
  }

  /** Reads a shard's records back from the segments, one read per run of adjacent frames. */
  private async readIndex(shard: number, index: readonly IndexRun[], floor: bigint): Promise<SequencedRecord[]> {
    const records: SequencedRecord[] = [];
    for (const run of [...index]) {
      if (run.lastSequence <= floor) continue;
      const path = run.segment.path;
      const file = await fsStep(`cannot open log segment ${path}`, () => open(path, "r"));
      try {
        const frames = run.frames;
        for (let i = 0; i < frames.length; ) {
          const start = frames[i] ?? 0;
          let end = start + (frames[i + 1] ?? 0);
          i += 2;
          while (i < frames.length && frames[i] === end) {
            end += frames[i + 1] ?? 0;
            i += 2;
          }
          const buf = Buffer.allocUnsafe(end - start);
          await fsStep(`cannot read log segment ${path}`, () => readExactly(file, buf, start));
          for (let at = 0; at < buf.length; ) {
            const frame = checkFrame(buf, at, RECORD_HEADER_BYTES);
            const header = frame.ok ? readRecordHeader(buf, frame) : frame.problem;
            if (!frame.ok || typeof header === "string") {
              throw corruptSegment(path, start + at, `${header} (it was valid when the directory was opened)`);
            }
            if (header.shard === shard && header.sequence > floor) {
              try {
                const record = fromBinary(LogRecordSchema, plain(buf.subarray(header.recordStart, frame.end)));
                records.push({ sequence: header.sequence, record });
              } catch (error) {
                throw corruptSegment(path, start + at, `record cannot be decoded (${String(error)})`);
              }
            }
            at = frame.end;
          }
        }
      } finally {
        await file.close();
      }
    }
    return records;
  }

  async writeSnapshot(log: LocalShardLog, snapshot: ShardSnapshot): Promise<void> {
    log.checkWritable();
    const state = log.state;
    return this.serialize(state, async () => {
      log.checkWritable();
      checkSnapshot(log.shard, snapshot, this.durableSequence, state.snapshot?.sequence);
      const path = join(this.snapshotDirectory, snapshotName(log.shard, snapshot.sequence));
      const temporary = `${path}.tmp`;
      const content = encodeSnapshotFile(log.shard, snapshot.sequence, log.epoch, toBinary(ShardSnapshotSchema, snapshot));
      try {
        await writeWholeFile(temporary, content, this.settings.fsync);
      } catch (error) {
        await unlink(temporary).catch(() => undefined);
        throw new StorageError(`writing snapshot ${temporary} failed: ${describeFsError(error)}`, { cause: error });
      }
      // A newer owner may have taken the shard while we wrote: its view wins.
      if (log.isFenced()) {
        await unlink(temporary).catch(() => undefined);
        log.checkWritable();
      }
      await fsStep(`installing snapshot ${path} failed`, async () => {
        await rename(temporary, path);
        if (this.settings.fsync) await fsyncDirectory(this.snapshotDirectory);
      });
      const previous = state.snapshot;
      state.snapshot = { sequence: snapshot.sequence, path };
      // From its first snapshot on, a shard's snapshot missing is damage.
      if (previous === undefined) await this.saveManifest();
      if (previous !== undefined && previous.path !== path) await unlink(previous.path).catch(() => undefined);
      state.index = state.index.filter((run) => run.lastSequence > snapshot.sequence);
      if (state.unrecovered !== undefined) {
        state.unrecovered = state.unrecovered.filter((r) => r.sequence > snapshot.sequence);
      }
      await this.dropCoveredSegments();
    });
  }
}

class LocalShardLog implements ShardLog {
  /** Set when a group holding records of this handle failed. */
  failure: StorageError | undefined;
  /** The group holding this handle's last append. */
  lastDurable: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly storage: LocalStorage,
    readonly state: ShardState,
    readonly shard: number,
    readonly epoch: bigint,
  ) {}

  recover(): Promise<RecoveredShard> {
    return this.storage.recover(this);
  }

  append(records: readonly LogRecord[]): AppendResult {
    this.checkWritable();
    return this.storage.enqueue(this, encodeRecords(records), false);
  }

  writeSnapshot(snapshot: ShardSnapshot): Promise<void> {
    return this.storage.writeSnapshot(this, snapshot);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.lastDurable.catch(() => undefined);
  }

  isFenced(): boolean {
    return this.state.epoch !== this.epoch;
  }

  checkWritable(): void {
    if (this.isFenced()) {
      throw new FencedError(
        `shard ${this.shard}: this log (epoch ${this.epoch}) was fenced by epoch ${this.state.epoch} of owner ${this.state.owner}`,
      );
    }
    if (this.failure !== undefined) {
      throw new StorageError(
        `shard ${this.shard}: an earlier append of this log failed (${this.failure.message}); open the shard again to continue from what is durable`,
        { cause: this.failure },
      );
    }
    if (this.closed) throw new StorageError(`shard ${this.shard}: this log (epoch ${this.epoch}) is closed`);
    this.storage.checkUsable();
  }
}

/** Runs a file system step, turning its failure into a StorageError that says what failed and why. */
async function fsStep<T>(what: string, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (error) {
    if (error instanceof StorageError) throw error;
    throw new StorageError(`${what}: ${describeFsError(error)}`, { cause: error });
  }
}

/**
 * `mkdir -p`, by hand: Node's recursive mkdir never returns for a path under
 * /proc (it retries ENOENT forever), and a storage path is user input.
 */
async function makeDirectory(path: string): Promise<void> {
  try {
    await mkdir(path);
    return;
  } catch (error) {
    const code = fsErrorCode(error);
    if (code === "EEXIST") {
      if ((await stat(path)).isDirectory()) return;
      throw Object.assign(new Error(`${path} exists and is not a directory`), { code: "ENOTDIR" });
    }
    const parent = dirname(path);
    if (code !== "ENOENT" || parent === path) throw error;
    await makeDirectory(parent);
  }
  // The parent exists now: a second ENOENT is final.
  await mkdir(path).catch(async (error: unknown) => {
    if (fsErrorCode(error) !== "EEXIST" || !(await stat(path)).isDirectory()) throw error;
  });
}

/** Creates a new, empty segment and makes its directory entry durable. */
async function createSegmentFile(path: string, directory: string, settings: Settings): Promise<FileHandle> {
  const file = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    if (settings.fsync) await fsyncDirectory(directory);
    return file;
  } catch (error) {
    await file.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw error;
  }
}

/**
 * The same bytes as a plain Uint8Array: protobuf-es hands out `bytes` fields
 * as views of its input, and those should not be Buffers (they compare and
 * serialize differently from what the runtime wrote).
 */
function plain(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

async function fsyncDirectory(path: string): Promise<void> {
  const dir = await open(path, "r");
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** `write` may write less than asked (a file size limit, a nearly full disk): loop until all is written or it fails. */
async function writeAll(file: FileHandle, buf: Buffer, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    const { bytesWritten } = await file.write(buf, done, buf.length - done, position + done);
    if (bytesWritten === 0) throw new Error(`write made no progress at byte ${position + done}`);
    done += bytesWritten;
  }
}

/** Writes `content` as the whole of a new or truncated file, fsync'd when asked. */
async function writeWholeFile(path: string, content: Buffer, fsync: boolean): Promise<void> {
  const file = await open(path, "w");
  try {
    await writeAll(file, content, 0);
    if (fsync) await file.sync();
  } finally {
    await file.close();
  }
}

async function readExactly(file: FileHandle, buf: Buffer, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    const { bytesRead } = await file.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) throw new Error(`unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
}
