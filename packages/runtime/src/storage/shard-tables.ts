import { type DescMessage, fromBinary, type MessageShape, toBinary } from "@bufbuild/protobuf";
import {
  DeadLetterSchema,
  EgressMessageSchema,
  EnvelopeSchema,
  InstanceStateSchema,
  JournalSchema,
  MemoSchema,
  OutboxEntrySchema,
  SourceWatermarkSchema,
} from "@shoal/sdk/internal";
import { maxKeyBytes, type ShardTable, type TableChange } from "./shard-store.js";
import { RecordEncodingError } from "./storage.js";

/**
 * The layout of a shard's tables: what each key is and which message each
 * value holds. The shard state (`shard/shard-state.ts`), the upgrade of old
 * data directories and the cluster's shard snapshots all read and write
 * tables through here, so the layout lives in one place.
 *
 * | table            | key                                  | value            |
 * | ---------------- | ------------------------------------ | ---------------- |
 * | `instance`       | `type/key`                           | `InstanceState`  |
 * | `instanceExpiry` | `order(expiresAtMs)` `/` `type/key`  | empty            |
 * | `pending`        | `order(sequence)` (acceptance order) | `Envelope`       |
 * | `outbox`         | `order(outbox sequence)`             | `OutboxEntry`    |
 * | `memo`           | memo id                              | `Memo`           |
 * | `memoExpiry`     | `order(expiresAtMs)` `/` memo id     | empty            |
 * | `journal`        | invocation id                        | `Journal`        |
 * | `egress`         | `order(sequence)` (commit order)     | `EgressMessage`  |
 * | `deadLetter`     | `order(sequence)` (oldest first)     | `DeadLetter`     |
 * | `watermark`      | `order(source shard)`                | `SourceWatermark`|
 * | `meta`           | a `metaKeys` name                    | `order(n)`       |
 */

/** Decimal digits of an order key: enough for any uint64. */
const orderDigits = 20;

/**
 * A number as a key that sorts as the number does (zero-padded decimal), so
 * a table's key order is its numeric order in every backend.
 */
export function orderKey(n: bigint | number): string {
  const s = n.toString();
  if (s.startsWith("-")) throw new RangeError(`order keys are for non-negative numbers, got ${s}`);
  return s.padStart(orderDigits, "0");
}

/** The number an `orderKey` holds. */
export function fromOrderKey(key: string): bigint {
  return BigInt(key);
}

/** The key of an expiry index entry: due time first, so a range up to `now` finds what is due. */
export function expiryKey(atMs: number | bigint, id: string): string {
  return `${orderKey(atMs)}/${id}`;
}

/**
 * Why an instance cannot be stored, or undefined when it can: the longest
 * table key it makes (its expiry index entry, `due/type/key`) must fit
 * `maxKeyBytes`. Checked where a message enters the node and where a handler
 * sends or calls, so no such message is ever accepted.
 */
export function instanceKeyTooLong(type: string, key: string): string | undefined {
  const keyBytes = Buffer.byteLength(key, "utf8");
  const limit = maxKeyBytes - (orderDigits + 1) - (Buffer.byteLength(type, "utf8") + 1);
  if (keyBytes <= limit) return undefined;
  return `the key of ${type} instance "${key.slice(0, 40)}${key.length > 40 ? "…" : ""}" is ${keyBytes} bytes (UTF-8); ${type} keys may be at most ${limit} bytes`;
}

/** The due time and the id of an expiry index key. */
export function parseExpiryKey(key: string): { atMs: number; id: string } {
  return { atMs: Number(key.slice(0, orderDigits)), id: key.slice(orderDigits + 1) };
}

/** The upper bound (exclusive) of expiry keys due at or before `nowMs`. */
export function expiryKeysDueBy(nowMs: number): string {
  return `${orderKey(nowMs)}/\u{10FFFF}`;
}

/** Names in the `meta` table. */
export const metaKeys = {
  /** The next outbox sequence this shard gives out. */
  nextOutboxSequence: "nextOutboxSequence",
  /** The next acceptance sequence of `pending`, `egress` and `deadLetter` keys. */
  nextOrder: "nextOrder",
  /** How many instances, memos and journals the shard holds, for `shoal status` and metrics without a scan. */
  instances: "instances",
  memos: "memos",
  journals: "journals",
} as const;

/** Which message each table's values hold. */
const valueSchemas = {
  instance: InstanceStateSchema,
  pending: EnvelopeSchema,
  outbox: OutboxEntrySchema,
  memo: MemoSchema,
  journal: JournalSchema,
  egress: EgressMessageSchema,
  deadLetter: DeadLetterSchema,
  watermark: SourceWatermarkSchema,
} as const satisfies Partial<Record<ShardTable, DescMessage>>;

type ValueTable = keyof typeof valueSchemas;
type ValueOf<T extends ValueTable> = MessageShape<(typeof valueSchemas)[T]>;

/**
 * Encodes a table value; throws `RecordEncodingError` (nothing written yet)
 * when the message cannot be encoded, e.g. an int64 field out of range.
 */
export function encodeValue<T extends ValueTable>(table: T, value: ValueOf<T>): Uint8Array {
  try {
    return toBinary(valueSchemas[table] as DescMessage, value);
  } catch (err) {
    throw new RecordEncodingError(`a ${table} entry cannot be encoded: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
    });
  }
}

/** Decodes a table value. */
export function decodeValue<T extends ValueTable>(table: T, bytes: Uint8Array): ValueOf<T> {
  return fromBinary(valueSchemas[table] as DescMessage, bytes) as ValueOf<T>;
}

/** A change that writes `value` to `table` under `key`. */
export function put<T extends ValueTable>(table: T, key: string, value: ValueOf<T>): TableChange {
  return { table, key, value: encodeValue(table, value) };
}

/** A change that deletes `key` from `table`. */
export function remove(table: ShardTable, key: string): TableChange {
  return { table, key, value: undefined };
}

/** A change to an index table (`instanceExpiry`, `memoExpiry`): the key is the entry. */
export function putIndex(table: "instanceExpiry" | "memoExpiry", key: string): TableChange {
  return { table, key, value: new Uint8Array(0) };
}

/** A change to a `meta` counter. */
export function putMeta(name: keyof typeof metaKeys, n: bigint): TableChange {
  return { table: "meta", key: metaKeys[name], value: new TextEncoder().encode(orderKey(n)) };
}

/** A `meta` counter's value, or `fallback` when it was never written. */
export function readMeta(bytes: Uint8Array | undefined, fallback: bigint): bigint {
  return bytes === undefined ? fallback : BigInt(new TextDecoder().decode(bytes));
}
