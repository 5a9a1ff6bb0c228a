/**
 * The write-ahead log of a shard in cluster mode (DESIGN §8–§9): one
 * JetStream stream per shard that only the shard's owner writes.
 *
 * Fencing. nats-server 2.9 checks per-subject expectations
 * (`Nats-Expected-Last-Subject-Sequence`, `kv.update`) on the stream leader
 * before replicating, against a state that lacks the proposals in flight, so
 * on an R3 stream two writers can both pass: they are not used here. A
 * stream-wide expectation is checked when each replica applies the
 * replicated entry, against state every replica has alike: that is what
 * fences, and it is why each shard has its own stream (a stream shared by all
 * shards would make every owner's appends conflict with every other's).
 *
 * Every append here carries `Nats-Expected-Last-Sequence`: the fence record a
 * new owner writes expects the last sequence it read at open, and each later
 * message expects the sequence of the one before it. Once a new owner's fence
 * is in the log, every append of an older handle expects a sequence the log
 * has moved past and is refused; nothing of it is stored. Messages carry
 * `Nats-Msg-Id` `<epoch>-<n>` (the handle's epoch, then 0 for the fence, 1, 2…
 * for its appends) so a publish the client resends is stored once, and a
 * reader knows which owner wrote each message.
 *
 * DESIGN §9 suggests `Nats-Expected-Last-Msg-Id` for the appends after the
 * fence. In 2.9.10 a replica compares that header with the last message id it
 * holds in memory, which a restarted replica rebuilds only from the messages
 * of the duplicate window (`rebuildDedupe` in stream.go). Measured on a
 * single 2.9.10 server: after a restart and an idle duplicate window, an
 * append expecting the last message's id is refused ("wrong last msg ID: ").
 * On R3, a restarted replica would refuse what the others accept, and the
 * replicas' logs would differ. The last sequence is recovered from disk by
 * every replica, so the expectation on it gives the same fence without that
 * hazard.
 *
 * Epochs increase along the log: `open` refuses an epoch not above the one
 * of the last message's writer. A publish acknowledged as a duplicate, or at
 * another sequence than expected, is refused too, so a reused message id can
 * never pass for a new append.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import {
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  type PubAck,
  type StreamInfo,
} from "@nats-io/jetstream";
import { type NatsConnection, TimeoutError } from "@nats-io/transport-node";
import { type LogRecord, LogRecordSchema, WalBatchSchema, WalTableChangeSchema } from "@shoal/sdk/internal";
import { defaults } from "../../config/defaults.js";
import { type ShardTable, shardTables, type TableChange, type WriteResult } from "../shard-store.js";
import { encodeRecords, FencedError, StorageError } from "../storage.js";

/** Options of `createShardWals`. */
export interface ShardWalsOptions {
  /** An open connection to the NATS servers; the WALs do not close it. */
  readonly connection: NatsConnection;
  /**
   * Replicas of each shard's stream, when this creates it. Default: 3 when the
   * server is part of a cluster, 1 on a single server.
   */
  readonly replicas?: number;
  /** Names streams `<prefix>-wal-<shard>` and subjects `<prefix>.wal.<shard>`. Default `shoal`. */
  readonly prefix?: string;
  /** How long an append waits for JetStream's acknowledgement, in ms. Default 5000. */
  readonly ackTimeoutMs?: number;
}

/** The shard logs of one NATS deployment. */
export interface ShardWals {
  /**
   * Takes the shard's log for `owner`: appends a fence record at `epoch` that
   * expects the log's last sequence as read here, so every handle opened
   * earlier is refused from then on. `epoch` defaults to one above the last
   * writer's and must be above it. Rejects with `FencedError` when another
   * owner appended in between (it won), and with `StorageError` when the log's
   * last message was not written by a Shoal owner.
   */
  open(shard: number, owner: string, epoch?: bigint): Promise<ShardWal>;
  /**
   * The log's messages after `afterSequence` (0 for all), up to the last one
   * present when reading starts, in order. Throws `StorageError` naming the
   * stream and sequence of a message that is not a WAL batch.
   */
  read(shard: number, afterSequence?: bigint): AsyncIterable<WalEntry>;
  /** The stream that holds a shard's log. */
  streamName(shard: number): string;
}

/** One message of a shard's log: the records of one flush and the table changes they made. */
export interface WalEntry {
  /** The stream sequence: strictly increasing within the shard, across owners. */
  readonly sequence: bigint;
  /** The epoch of the owner that wrote it. */
  readonly epoch: bigint;
  readonly records: readonly LogRecord[];
  /** The table changes of the flush's writes, in order (empty for a fence). */
  readonly changes: readonly TableChange[];
}

/** One owner's handle on a shard's log. */
export interface ShardWal {
  readonly shard: number;
  readonly owner: string;
  readonly epoch: bigint;
  /** The log's last sequence when this handle opened (what precedes its fence). */
  readonly openedAtSequence: bigint;
  /**
   * Appends the records of one flush and the table changes they made, as one
   * message (or several, in order, when they exceed the server's maximum
   * payload: then a crash between them can leave only the first in the log). Throws `FencedError` at
   * once when a newer owner is known to have taken the log, and
   * `StorageError` once an earlier append of this handle failed: later
   * records may depend on lost ones, so open the log again. Throws
   * `RecordEncodingError` for a record that cannot be encoded; nothing is
   * appended then and the handle stays usable.
   *
   * The result's `sequence` is the one the append's last message gets;
   * records appended while a message is in flight share the next message
   * (and its sequence). `durable` resolves when JetStream acknowledged it and
   * everything before it, and rejects with `FencedError` when a newer owner
   * took the log, else with `StorageError`.
   */
  append(records: readonly LogRecord[], changes?: readonly TableChange[]): WriteResult;
  /**
   * Publishes nothing until the end of this event-loop turn, so the appends
   * of the writers a completion wakes share one message instead of the first
   * going alone: call it just before waking them.
   */
  hold(): void;
  /** Waits for the appends in flight; the handle refuses appends from then on. */
  close(): Promise<void>;
}

/** Creates the shard logs of the NATS deployment `options.connection` reaches. */
export function createShardWals(options: ShardWalsOptions): ShardWals {
  const nc = options.connection;
  const prefix = options.prefix ?? defaults.storage.prefix;
  const ackTimeoutMs = options.ackTimeoutMs ?? 5_000;
  const js = jetstream(nc, { timeout: ackTimeoutMs });
  let manager: Promise<JetStreamManager> | undefined;
  const jsm = () => {
    // Not kept when it failed (JetStream unavailable for a moment): the next shard opened asks again.
    manager ??= jetstreamManager(nc, { timeout: ackTimeoutMs }).catch((err: unknown) => {
      manager = undefined;
      throw err;
    });
    return manager;
  };
  const streamName = (shard: number) => `${prefix}-wal-${shard}`;
  const subject = (shard: number) => `${prefix}.wal.${shard}`;

  async function ensureStream(shard: number): Promise<StreamInfo> {
    const m = await jsm();
    const name = streamName(shard);
    try {
      return await m.streams.info(name);
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound)) {
        throw storageError(`cannot read stream ${name}`, err);
      }
    }
    try {
      // A concurrent opener may create it first: adding the same config again succeeds.
      return await retryPlacement(() =>
        m.streams.add({
          name,
          subjects: [subject(shard)],
          num_replicas: options.replicas ?? (nc.info?.cluster === undefined ? 1 : 3),
        }),
      );
    } catch (err) {
      throw storageError(`cannot create stream ${name} for shard ${shard}`, err);
    }
  }

  async function lastWriterEpoch(shard: number, sequence: number): Promise<bigint> {
    const m = await jsm();
    let header: string | undefined;
    try {
      const message = await m.streams.getMessage(streamName(shard), { seq: sequence });
      header = message?.header?.get("Nats-Msg-Id");
    } catch (err) {
      // Removed by hand (`nats stream rmm`): the check on acknowledged sequences still refuses a reused id.
      if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound) return 0n;
      throw storageError(`cannot read message ${sequence} of stream ${streamName(shard)}`, err);
    }
    return parseMessageId(streamName(shard), BigInt(sequence), header).epoch;
  }

  return {
    streamName,
    async open(shard, owner, epoch) {
      const name = streamName(shard);
      const info = await ensureStream(shard);
      const last = info.state.last_seq;
      const lastEpoch = last === 0 ? 0n : await lastWriterEpoch(shard, last);
      const ownEpoch = epoch ?? lastEpoch + 1n;
      if (ownEpoch <= lastEpoch) {
        throw new FencedError(
          `${owner} cannot open shard ${shard} at epoch ${ownEpoch}: stream ${name} was last written at epoch ${lastEpoch}; open it with a higher epoch`,
        );
      }
      const fence = create(LogRecordSchema, {
        kind: { case: "fence", value: { owner, epoch: ownEpoch } },
        writtenAtMs: BigInt(Date.now()),
      });
      const writer = createWriter({
        js,
        shard,
        stream: name,
        subject: subject(shard),
        owner,
        epoch: ownEpoch,
        after: BigInt(last),
        ackTimeoutMs,
        // Headers count towards the server's limit too.
        maxPayload: (nc.info?.max_payload ?? 1024 * 1024) - 4096,
      });
      await writer.append([fence]).durable;
      return writer.handle(BigInt(last));
    },
    read(shard, afterSequence = 0n) {
      return readLog(js, jsm, streamName(shard), afterSequence);
    },
  };
}

interface WriterOptions {
  readonly js: JetStreamClient;
  readonly shard: number;
  readonly stream: string;
  readonly subject: string;
  readonly owner: string;
  readonly epoch: bigint;
  /** The sequence the first message expects as the log's last. */
  readonly after: bigint;
  readonly ackTimeoutMs: number;
  readonly maxPayload: number;
}

/** The records of one message of the log, waiting to be published or in flight. */
interface Batch {
  /** The sequence the message gets: one above the message before it. */
  readonly sequence: bigint;
  readonly writer: BinaryWriter;
  size: number;
  readonly durable: Promise<void>;
  resolve(): void;
  reject(err: StorageError): void;
}

/**
 * Publishes one message at a time: the next waits for the acknowledgement of
 * the one before, and takes every record appended meanwhile (a group
 * commit). With several messages in flight, the expected sequences of a
 * stale owner's later messages are guesses (each one above the last) and can
 * happen to match the log after a newer owner's fence: the tests saw such a
 * message accepted. With one in flight, a message expects the sequence
 * JetStream acknowledged for this owner's own last message, which no other
 * writer's message can have.
 */
function createWriter(o: WriterOptions) {
  let acked = o.after;
  let next = 0;
  let inFlight: Batch | undefined;
  /** Set by `hold` until the end of the event-loop turn: appends meanwhile wait and share a message. */
  let held = false;
  const queue: Batch[] = [];
  let failure: StorageError | undefined;
  let closed = false;

  function newBatch(sequence: bigint): Batch {
    let resolve!: () => void;
    let reject!: (err: StorageError) => void;
    const durable = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // A caller that drops `durable` learns of the failure from its next append.
    durable.catch(() => undefined);
    const batch: Batch = { sequence, writer: new BinaryWriter(), size: 0, durable, resolve, reject };
    queue.push(batch);
    return batch;
  }

  function fail(err: StorageError): void {
    failure ??= err;
    for (const batch of queue.splice(0)) batch.reject(failure);
  }

  function pump(): void {
    if (inFlight !== undefined || held || failure !== undefined) return;
    const batch = queue.shift();
    if (batch === undefined) return;
    inFlight = batch;
    const expected = acked;
    const msgID = `${o.epoch}-${next++}`;
    o.js.publish(o.subject, batch.writer.finish(), { msgID, expect: { lastSequence: Number(expected) }, timeout: o.ackTimeoutMs }).then(
      (ack: PubAck) => {
        inFlight = undefined;
        if (ack.duplicate || BigInt(ack.seq) !== batch.sequence) {
          // The server dropped this message as a copy of an earlier one with the same id: another owner opened at this epoch.
          const err = new FencedError(
            `shard ${o.shard}: stream ${o.stream} already holds message ${msgID} (at sequence ${ack.seq}), so another owner opened at epoch ${o.epoch} too; open the shard again with a higher epoch`,
          );
          batch.reject(err);
          fail(err);
          return;
        }
        acked = batch.sequence;
        batch.resolve();
        pump();
      },
      (err: unknown) => {
        inFlight = undefined;
        const failed =
          err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamWrongLastSequence
            ? new FencedError(
                `shard ${o.shard}: ${o.owner} (epoch ${o.epoch}) was fenced: stream ${o.stream} moved past sequence ${expected} (${err.message}), so another owner took the shard; open it again to continue`,
                { cause: err },
              )
            : storageError(`append ${msgID} of shard ${o.shard} to stream ${o.stream} failed and may or may not be stored`, err);
        batch.reject(failed);
        fail(failed);
      },
    );
  }

  function append(records: readonly LogRecord[], changes: readonly TableChange[] = []): WriteResult {
    if (failure instanceof FencedError) throw failure;
    if (failure !== undefined) {
      throw new StorageError(
        `shard ${o.shard}: an earlier append of ${o.owner} (epoch ${o.epoch}) failed (${failure.message}); open the shard again`,
        {
          cause: failure,
        },
      );
    }
    if (closed) throw new StorageError(`shard ${o.shard}: the log handle of ${o.owner} (epoch ${o.epoch}) is closed; open the shard again`);
    // WalBatch's fields: 1 a record, 2 a table change; each repeated, so a message may hold several writes.
    const encoded: [field: 1 | 2, bytes: Uint8Array][] = encodeRecords(records).map((record) => [1, record]);
    for (const change of changes) encoded.push([2, encodeChange(change)]);
    for (const [field, item] of encoded) {
      if (framedSize(item) > o.maxPayload) {
        throw new StorageError(
          `a log ${field === 1 ? "record" : "table change"} of ${item.length} bytes does not fit in one message of stream ${o.stream} (at most ${o.maxPayload} bytes)`,
        );
      }
    }
    let batch = queue.at(-1);
    for (const [field, item] of encoded) {
      if (batch === undefined || batch.size + framedSize(item) > o.maxPayload) {
        batch = newBatch(((batch ?? inFlight)?.sequence ?? acked) + 1n);
      }
      batch.writer.tag(field, WireType.LengthDelimited).bytes(item);
      batch.size += framedSize(item);
    }
    const last = batch ?? inFlight;
    pump();
    return { sequence: last?.sequence ?? acked, durable: last?.durable ?? Promise.resolve() };
  }

  return {
    append,
    handle(openedAtSequence: bigint): ShardWal {
      return {
        shard: o.shard,
        owner: o.owner,
        epoch: o.epoch,
        openedAtSequence,
        append,
        hold() {
          if (held) return;
          held = true;
          setImmediate(() => {
            held = false;
            pump();
          });
        },
        async close() {
          closed = true;
          await (queue.at(-1) ?? inFlight)?.durable.catch(() => undefined);
        },
      };
    },
  };
}

function encodeChange(change: TableChange): Uint8Array {
  return toBinary(
    WalTableChangeSchema,
    create(WalTableChangeSchema, { table: change.table, key: change.key, ...(change.value === undefined ? {} : { value: change.value }) }),
  );
}

const tableNames: ReadonlySet<string> = new Set(shardTables);

/** A record's size inside a WalBatch: the field tag and length prefix at most add 6 bytes. */
function framedSize(record: Uint8Array): number {
  return record.length + 6;
}

async function* readLog(js: JetStreamClient, jsm: () => Promise<JetStreamManager>, stream: string, after: bigint): AsyncIterable<WalEntry> {
  let info: StreamInfo;
  try {
    info = await (await jsm()).streams.info(stream);
  } catch (err) {
    throw storageError(`cannot read stream ${stream}`, err);
  }
  const last = BigInt(info.state.last_seq);
  if (last <= after) return;
  const consumer = await js.consumers.get(stream, { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: Number(after + 1n) });
  try {
    for (;;) {
      const messages = await consumer.fetch({ max_messages: 256, expires: 5_000 });
      let got = 0;
      for await (const m of messages) {
        got++;
        const sequence = BigInt(m.seq);
        yield decodeEntry(stream, sequence, m.headers?.get("Nats-Msg-Id"), m.data);
        if (sequence >= last) return;
      }
      if (got === 0)
        throw new StorageError(`stream ${stream} delivered nothing after sequence ${after} although it holds messages up to ${last}`);
    }
  } finally {
    await consumer.delete().catch(() => undefined);
  }
}

/** Decodes one message of a shard's log, naming the stream and sequence of anything that is not a WAL batch. */
export function decodeEntry(stream: string, sequence: bigint, msgId: string | undefined, data: Uint8Array): WalEntry {
  const { epoch } = parseMessageId(stream, sequence, msgId);
  let batch: ReturnType<typeof fromBinary<typeof WalBatchSchema>>;
  try {
    batch = fromBinary(WalBatchSchema, data);
  } catch (err) {
    throw storageError(`message ${sequence} of stream ${stream} is not a Shoal WAL batch (${data.length} bytes)`, err);
  }
  const records = batch.records;
  const bad = records.findIndex((r) => r.kind.case === undefined);
  const badTable = batch.changes.findIndex((c) => !tableNames.has(c.table));
  const problem =
    records.length === 0 && batch.changes.length === 0
      ? "it holds no record and no table change"
      : bad >= 0
        ? `record ${bad} has no kind`
        : badTable >= 0
          ? `table change ${badTable} names no shard table (${JSON.stringify(batch.changes[badTable]?.table)})`
          : undefined;
  if (problem !== undefined) {
    throw new StorageError(
      `message ${sequence} of stream ${stream} is not a Shoal WAL batch: ${problem}; only the shard's owner may publish to this stream`,
    );
  }
  const changes = batch.changes.map((c): TableChange => ({ table: c.table as ShardTable, key: c.key, value: c.value }));
  return { sequence, epoch, records, changes };
}

function parseMessageId(stream: string, sequence: bigint, msgId: string | undefined): { epoch: bigint; n: bigint } {
  const match = msgId?.match(/^(\d+)-(\d+)$/);
  if (match === null || match === undefined) {
    throw new StorageError(
      `message ${sequence} of stream ${stream} was not written by a Shoal shard owner (Nats-Msg-Id ${msgId === undefined || msgId === "" ? "missing" : JSON.stringify(msgId)}, expected <epoch>-<n>); only the shard's owner may publish to this stream: remove the message (nats stream rmm ${stream} ${sequence}) after checking what wrote it`,
    );
  }
  return { epoch: BigInt(match[1] as string), n: BigInt(match[2] as string) };
}

/**
 * JetStream's code for "no suitable peers for placement": a replicated stream
 * or bucket cannot be placed yet. Right after a cluster's servers start, or
 * while one of them restarts, the meta leader may not know enough current
 * peers; the same request succeeds a moment later.
 */
const noPeersForPlacement = 10005;

/**
 * JetStream's code for "JetStream system temporarily unavailable" (503): the
 * server has no meta leader to ask, as while a cluster without quorum elects
 * one (seen by a node opening the lease bucket with 2 of 3 servers down).
 */
const temporarilyUnavailable = 10008;

/**
 * Whether JetStream only cannot answer for the moment: no peers to place a
 * stream on, no meta leader ("temporarily unavailable"), a request that timed
 * out, or no JetStream API responding (what
 * the client calls "jetstream is not enabled", as long as it got no answer
 * at all). While a nats-server of a cluster restarts, or right after a meta
 * leader is elected, streams and buckets elect their own leaders, and their
 * requests time out or find no responder for a few seconds.
 */
function unavailableForNow(err: unknown): boolean {
  if (err instanceof JetStreamApiError) return err.code === noPeersForPlacement || err.code === temporarilyUnavailable;
  if (err instanceof TimeoutError) return true;
  // An answer saying JetStream is off for the account is final; no answer is not.
  return err instanceof Error && err.name === "JetStreamNotEnabled" && !(err.cause instanceof JetStreamApiError);
}

/**
 * Runs `create` (a stream or bucket creation, or opening one) again while
 * JetStream cannot answer for the moment (no peers to place it on, a timeout,
 * no API responder), for up to `waitMs`; any other error at once.
 */
export async function retryPlacement<T>(create: () => Promise<T>, waitMs = 30_000): Promise<T> {
  const deadline = Date.now() + waitMs;
  for (let delayMs = 100; ; delayMs = Math.min(delayMs * 2, 1_000)) {
    try {
      return await create();
    } catch (err) {
      if (!unavailableForNow(err) || Date.now() + delayMs > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }
}

/** A `StorageError` saying what failed, with the cause's message. */
export function storageError(what: string, err: unknown): StorageError {
  return new StorageError(`${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}
