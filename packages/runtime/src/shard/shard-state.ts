import type { CallResult, Commit, DeadLetter, EgressMessage, Envelope, LogRecord, Memo } from "@shoal/sdk/internal";
import type { ShardStore, TableChange, WriteResult } from "../storage/shard-store.js";
import {
  decodeValue,
  encodeValue,
  expiryKey,
  expiryKeysDueBy,
  metaKeys,
  orderKey,
  parseExpiryKey,
  putIndex,
  putMeta,
  readMeta,
  remove,
} from "../storage/shard-tables.js";
import type { InstanceCache, InstanceRecord } from "./instance-cache.js";

export type { InstanceRecord } from "./instance-cache.js";

/** The envelope handler names the runtime uses for its own messages between shards. */
export const controlHandlers = {
  /** A call's reply, delivered to the caller's shard; payload: CallResultInput. */
  callResult: "$result",
  /** Cancels a delayed message; payload: the message id (UTF-8). */
  cancel: "$cancel",
  /**
   * Takes back a call not yet run, to break a call cycle between nodes: the
   * caller is answered FailedPrecondition instead; payload: the call's
   * message id (UTF-8).
   */
  withdraw: "$withdraw",
} as const;

/** Dead letters a shard keeps (the most recent); older ones are dropped as new ones come. */
export const deadLetterRetention = 1000;

/** The `instance` table's key of an instance. Type names hold no `/`, so the first one splits it. */
export function instanceKey(type: string, key: string): string {
  return `${type}/${key}`;
}

function splitInstanceKey(id: string): { type: string; key: string } {
  const slash = id.indexOf("/");
  return { type: id.slice(0, slash), key: id.slice(slash + 1) };
}

/** A value written and not yet durable (`value` undefined: deleted), and the write that last touched it. */
interface Overlaid<T> {
  readonly value: T | undefined;
  readonly write: number;
}

type ColdTable = "instance" | "memo" | "journal";

/** A record's values encoded before anything of it is applied: encoding is all that can fail. */
interface Encoded {
  readonly values: Uint8Array[];
}

/**
 * A shard's durable state, as a view over its store (`ShardStore`).
 *
 * The hot tables (pending, outbox, egress, dead letters, watermarks, meta),
 * bounded by the work in flight, are read whole at `open` and kept in
 * memory. The cold ones (instances, memos, journals) are read on demand: a
 * lookup sees first the overlay of what was written and is not durable yet
 * (deletions included), then, for instances, the node's cache of decoded
 * clean instances, then the store. Once a write is durable its overlay
 * entries go (instances move to the cache): the store has them.
 *
 * `write` applies a log record: it computes the record's table changes,
 * updates the view and hands both to the store as one write. Its semantics
 * are those of the log: a live shard and one reopened after a crash see the
 * same state.
 */
export class ShardState {
  /** Accepted and not consumed, in acceptance order (delayed ones included). */
  readonly pending = new Map<string, Envelope>();
  /** Outbox entries not yet acknowledged by their receiver, by sequence. */
  readonly outbox = new Map<bigint, Envelope>();
  /** Highest outbox sequence received per source shard. */
  readonly watermarks = new Map<number, bigint>();
  /** Egress messages committed and not yet handed to their egress, in commit order. */
  readonly egress = new Map<string, EgressMessage>();
  /** Messages that failed for good, oldest first, by envelope id. */
  readonly deadLetters = new Map<string, DeadLetter>();
  nextOutboxSequence = 1n;
  /** The store's sequence after the last write. */
  sequence: bigint;
  /** Instances, memos and journals in the shard (kept in `meta`, so counting needs no scan). */
  readonly counts = { instances: 0n, memos: 0n, journals: 0n };
  /**
   * Whether `counts` are exact: the store has them (or the shard is new). A
   * store written without them (converted from elsewhere) gets them counted
   * from here on, and its lookups never take the "none in the store" short cut.
   */
  private countsExact: boolean;
  /** Whether the store has the counts: the first write of a new shard writes all three. */
  private countsStored: boolean;

  /** Table keys of the hot entries, by id: `pending`, `egress` and `deadLetter` keys are acceptance order. */
  private readonly pendingKeys = new Map<string, string>();
  private readonly egressKeys = new Map<string, string>();
  private readonly deadLetterKeys = new Map<string, string>();
  private nextOrder = 1n;

  private readonly overlay = {
    instance: new Map<string, Overlaid<InstanceRecord>>(),
    memo: new Map<string, Overlaid<Memo>>(),
    journal: new Map<string, Overlaid<CallResult[]>>(),
  };
  /** Writes not durable yet, oldest first, with the overlay entries each touched. */
  private readonly unsettled: Array<{ readonly write: number; readonly touched: Array<[ColdTable, string]> }> = [];
  private writes = 0;
  private touched: Array<[ColdTable, string]> = [];

  private constructor(
    readonly store: ShardStore,
    private readonly cache: InstanceCache,
  ) {
    this.sequence = store.openedAtSequence;
    const stored = (["instances", "memos", "journals"] as const).every((name) => store.get("meta", metaKeys[name]) !== undefined);
    this.countsStored = stored;
    this.countsExact = stored || store.openedAtSequence === 0n;
  }

  get shard(): number {
    return this.store.shard;
  }

  /** Opens the view: reads the hot tables whole, nothing of the cold ones. */
  static open(store: ShardStore, cache: InstanceCache): ShardState {
    const state = new ShardState(store, cache);
    for (const { key, value } of store.range("pending")) {
      const envelope = decodeValue("pending", value);
      state.pending.set(envelope.id, envelope);
      state.pendingKeys.set(envelope.id, key);
    }
    for (const { value } of store.range("outbox")) {
      const entry = decodeValue("outbox", value);
      if (entry.envelope !== undefined) state.outbox.set(entry.sequence, entry.envelope);
    }
    for (const { key, value } of store.range("egress")) {
      const message = decodeValue("egress", value);
      state.egress.set(message.id, message);
      state.egressKeys.set(message.id, key);
    }
    for (const { key, value } of store.range("deadLetter")) {
      const letter = decodeValue("deadLetter", value);
      state.deadLetters.set(letter.envelopeId, letter);
      state.deadLetterKeys.set(letter.envelopeId, key);
    }
    for (const { value } of store.range("watermark")) {
      const w = decodeValue("watermark", value);
      state.watermarks.set(w.shard, w.sequence);
    }
    const meta = (name: keyof typeof metaKeys, fallback: bigint) => readMeta(store.get("meta", metaKeys[name]), fallback);
    state.nextOutboxSequence = meta("nextOutboxSequence", 1n);
    state.nextOrder = meta("nextOrder", 1n);
    state.counts.instances = meta("instances", 0n);
    state.counts.memos = meta("memos", 0n);
    state.counts.journals = meta("journals", 0n);
    return state;
  }

  /** An instance's committed (possibly not yet durable) record. */
  instance(type: string, key: string): InstanceRecord | undefined {
    const id = instanceKey(type, key);
    const overlaid = this.overlay.instance.get(id);
    if (overlaid !== undefined) return overlaid.value;
    const cached = this.cache.get(this.shard, id);
    if (cached !== undefined) return cached;
    const bytes = this.store.get("instance", id);
    if (bytes === undefined) return undefined;
    const decoded = decodeValue("instance", bytes);
    const record: InstanceRecord = { type, key, state: decoded.state, expiresAtMs: Number(decoded.expiresAtMs) };
    this.cache.set(this.shard, id, record);
    return record;
  }

  /** A memo, expired or not (the caller decides), unless a sweep removed it. */
  memo(id: string): Memo | undefined {
    const overlaid = this.overlay.memo.get(id);
    if (overlaid !== undefined) return overlaid.value;
    // The count is exact: with none in the store, no read is needed.
    if (this.countsExact && this.counts.memos === 0n) return undefined;
    const bytes = this.store.get("memo", id);
    return bytes === undefined ? undefined : decodeValue("memo", bytes);
  }

  /** The call results an invocation has committed so far, if it has a journal. */
  journal(invocationId: string): readonly CallResult[] | undefined {
    const overlaid = this.overlay.journal.get(invocationId);
    if (overlaid !== undefined) return overlaid.value;
    // Most invocations make no calls: with no journal in the shard, no read is needed.
    if (this.countsExact && this.counts.journals === 0n) return undefined;
    const bytes = this.store.get("journal", invocationId);
    return bytes === undefined ? undefined : decodeValue("journal", bytes).results;
  }

  /** Whether an envelope from another shard's outbox was already received. */
  /** The last sequence taken from a source shard (0: none). */
  watermarkOf(shard: number | undefined): bigint {
    return shard === undefined ? 0n : (this.watermarks.get(shard) ?? 0n);
  }

  isDuplicate(envelope: Envelope): boolean {
    const source = envelope.source;
    if (source === undefined) return false;
    return source.sequence <= (this.watermarks.get(source.shard) ?? 0n);
  }

  /**
   * Applies log records to the view and writes them with their table changes
   * to the store, as one write. Throws `RecordEncodingError` before anything
   * is applied or written when a value cannot be encoded; the store's errors
   * (`FencedError`, `StorageError`) after the view changed: the shard must
   * then stop.
   */
  write(records: readonly LogRecord[]): WriteResult {
    const encoded = records.map((record) => this.encode(record));
    const changes: TableChange[] = [];
    const before = { ...this.counts, nextOrder: this.nextOrder, nextOutboxSequence: this.nextOutboxSequence };
    records.forEach((record, i) => {
      this.apply(record, encoded[i] as Encoded, changes);
    });
    if (this.nextOrder !== before.nextOrder) changes.push(putMeta("nextOrder", this.nextOrder));
    if (this.nextOutboxSequence !== before.nextOutboxSequence) changes.push(putMeta("nextOutboxSequence", this.nextOutboxSequence));
    this.countChanges(before, changes);
    return this.writeChanges(changes, records);
  }

  /** Writes changes the view made itself (sweeps), and tracks their overlay entries until they are durable. */
  private writeChanges(changes: readonly TableChange[], records: readonly LogRecord[]): WriteResult {
    const write = ++this.writes;
    const touched = this.touched;
    this.touched = [];
    const result = this.store.write(changes, records);
    this.sequence = result.sequence;
    this.unsettled.push({ write, touched });
    result.durable.then(
      () => this.settle(write),
      () => {},
    );
    return result;
  }

  private countChanges(before: { instances: bigint; memos: bigint; journals: bigint }, changes: TableChange[]) {
    const all = this.countsExact && !this.countsStored;
    this.countsStored ||= all;
    for (const name of ["instances", "memos", "journals"] as const)
      if (all || this.counts[name] !== before[name]) changes.push(putMeta(name, this.counts[name]));
  }

  /** The durable write's overlay entries that no later write touched go: the store has them now. */
  private settle(write: number) {
    while (this.unsettled.length > 0 && (this.unsettled[0]?.write ?? Infinity) <= write) {
      const done = this.unsettled.shift();
      if (done === undefined) break;
      for (const [table, id] of done.touched) {
        const map: Map<string, Overlaid<unknown>> = this.overlay[table];
        const entry = map.get(id);
        if (entry === undefined || entry.write !== done.write) continue;
        map.delete(id);
        if (table === "instance" && entry.value !== undefined) this.cache.set(this.shard, id, entry.value as InstanceRecord);
      }
    }
  }

  private setOverlay(table: ColdTable, id: string, value: InstanceRecord | Memo | CallResult[] | undefined) {
    (this.overlay[table] as Map<string, Overlaid<unknown>>).set(id, { value, write: this.writes + 1 });
    this.touched.push([table, id]);
  }

  /** Encodes every value a record writes, so a value that cannot be encoded fails it before anything is applied. */
  private encode(record: LogRecord): Encoded {
    const values: Uint8Array[] = [];
    switch (record.kind.case) {
      case "input":
        if (record.kind.value.envelope !== undefined) values.push(encodeValue("pending", record.kind.value.envelope));
        break;
      case "callResult": {
        const { invocationId, result } = record.kind.value;
        if (result !== undefined) encodeValue("journal", { $typeName: "shoal.v1.Journal", invocationId, results: [result] });
        break;
      }
      case "commit": {
        const commit = record.kind.value;
        for (const write of commit.stateWrites) {
          if (write.address === undefined || write.clear) continue;
          values.push(
            encodeValue("instance", {
              $typeName: "shoal.v1.InstanceState",
              type: write.address.type,
              key: write.address.key,
              state: write.state,
              expiresAtMs: write.expiresAtMs,
            }),
          );
        }
        for (const entry of commit.outbox) values.push(encodeValue("outbox", entry));
        for (const message of commit.egress) values.push(encodeValue("egress", message));
        for (const memo of commit.memos) values.push(encodeValue("memo", memo));
        for (const letter of commit.deadLetters) values.push(encodeValue("deadLetter", letter));
        break;
      }
    }
    return { values };
  }

  private apply(record: LogRecord, encoded: Encoded, changes: TableChange[]): void {
    const values = encoded.values[Symbol.iterator]();
    const next = () => values.next().value as Uint8Array;
    switch (record.kind.case) {
      case "input": {
        const envelope = record.kind.value.envelope;
        if (envelope === undefined || this.isDuplicate(envelope)) return;
        this.noteSource(envelope.source, changes);
        if (envelope.handler === controlHandlers.cancel) {
          this.cancelDelayed(new TextDecoder().decode(envelope.payload), changes);
          return;
        }
        // Written by nodes before a withdrawal became a commit with a kept answer (ShardProcessor.withdrawCall); still read.
        if (envelope.handler === controlHandlers.withdraw) {
          this.removePending(new TextDecoder().decode(envelope.payload), changes);
          return;
        }
        const old = this.pendingKeys.get(envelope.id);
        if (old !== undefined) changes.push(remove("pending", old));
        const key = orderKey(this.nextOrder++);
        this.pending.delete(envelope.id);
        this.pending.set(envelope.id, envelope);
        this.pendingKeys.set(envelope.id, key);
        changes.push({ table: "pending", key, value: next() });
        return;
      }
      case "callResult": {
        const input = record.kind.value;
        if (input.source !== undefined && input.source.sequence <= (this.watermarks.get(input.source.shard) ?? 0n)) return;
        this.noteSource(input.source, changes);
        const result = input.result;
        if (result === undefined) return;
        const journal = this.journal(input.invocationId);
        if (journal?.some((r) => r.callId === result.callId)) return;
        if (journal === undefined) this.counts.journals++;
        const results = [...(journal ?? []), result];
        this.setOverlay("journal", input.invocationId, results);
        changes.push({
          table: "journal",
          key: input.invocationId,
          value: encodeValue("journal", { $typeName: "shoal.v1.Journal", invocationId: input.invocationId, results }),
        });
        return;
      }
      case "commit":
        this.applyCommit(record.kind.value, next, changes);
        return;
    }
  }

  private noteSource(source: { shard: number; sequence: bigint } | undefined, changes: TableChange[]) {
    if (source === undefined) return;
    this.watermarks.set(source.shard, source.sequence);
    changes.push({
      table: "watermark",
      key: orderKey(source.shard),
      value: encodeValue("watermark", { $typeName: "shoal.v1.SourceWatermark", shard: source.shard, sequence: source.sequence }),
    });
  }

  private applyCommit(commit: Commit, next: () => Uint8Array, changes: TableChange[]) {
    for (const id of commit.consumed) this.removePending(id, changes);
    for (const write of commit.stateWrites) {
      const address = write.address;
      if (address === undefined) continue;
      const id = instanceKey(address.type, address.key);
      const previous = this.instance(address.type, address.key);
      if (previous !== undefined && previous.expiresAtMs > 0) changes.push(remove("instanceExpiry", expiryKey(previous.expiresAtMs, id)));
      this.cache.delete(this.shard, id);
      if (write.clear) {
        if (previous === undefined) continue;
        this.counts.instances--;
        this.setOverlay("instance", id, undefined);
        changes.push(remove("instance", id));
        continue;
      }
      if (previous === undefined) this.counts.instances++;
      const expiresAtMs = Number(write.expiresAtMs);
      this.setOverlay("instance", id, { type: address.type, key: address.key, state: write.state, expiresAtMs });
      changes.push({ table: "instance", key: id, value: next() });
      if (expiresAtMs > 0) changes.push(putIndex("instanceExpiry", expiryKey(expiresAtMs, id)));
    }
    for (const entry of commit.outbox) {
      const value = next();
      if (entry.envelope !== undefined) {
        this.outbox.set(entry.sequence, entry.envelope);
        changes.push({ table: "outbox", key: orderKey(entry.sequence), value });
      }
      if (entry.sequence >= this.nextOutboxSequence) this.nextOutboxSequence = entry.sequence + 1n;
    }
    for (const cancellation of commit.cancellations) this.cancelDelayed(cancellation.envelopeId, changes);
    for (const message of commit.egress) {
      const key = orderKey(this.nextOrder++);
      const old = this.egressKeys.get(message.id);
      if (old !== undefined) changes.push(remove("egress", old));
      this.egress.delete(message.id);
      this.egress.set(message.id, message);
      this.egressKeys.set(message.id, key);
      changes.push({ table: "egress", key, value: next() });
    }
    for (const memo of commit.memos) {
      const previous = this.memo(memo.id);
      if (previous === undefined) this.counts.memos++;
      else if (previous.expiresAtMs > 0n) changes.push(remove("memoExpiry", expiryKey(previous.expiresAtMs, memo.id)));
      this.setOverlay("memo", memo.id, memo);
      changes.push({ table: "memo", key: memo.id, value: next() });
      if (memo.expiresAtMs > 0n) changes.push(putIndex("memoExpiry", expiryKey(memo.expiresAtMs, memo.id)));
    }
    for (const sequence of commit.acked) {
      if (this.outbox.delete(sequence)) changes.push(remove("outbox", orderKey(sequence)));
    }
    for (const id of commit.finishedInvocations) this.removeJournal(id, changes);
    for (const id of commit.egressDelivered) {
      const key = this.egressKeys.get(id);
      if (key === undefined) continue;
      this.egress.delete(id);
      this.egressKeys.delete(id);
      changes.push(remove("egress", key));
    }
    for (const letter of commit.deadLetters) this.addDeadLetter(letter, next(), changes);
  }

  private removePending(id: string, changes: TableChange[]) {
    const key = this.pendingKeys.get(id);
    this.pending.delete(id);
    if (key === undefined) return;
    this.pendingKeys.delete(id);
    changes.push(remove("pending", key));
  }

  private removeJournal(id: string, changes: TableChange[]) {
    if (this.journal(id) === undefined) return;
    this.counts.journals--;
    this.setOverlay("journal", id, undefined);
    changes.push(remove("journal", id));
  }

  private addDeadLetter(letter: DeadLetter, value: Uint8Array, changes: TableChange[]) {
    const old = this.deadLetterKeys.get(letter.envelopeId);
    if (old !== undefined) changes.push(remove("deadLetter", old));
    const key = orderKey(this.nextOrder++);
    this.deadLetters.delete(letter.envelopeId);
    this.deadLetters.set(letter.envelopeId, letter);
    this.deadLetterKeys.set(letter.envelopeId, key);
    changes.push({ table: "deadLetter", key, value });
    for (const id of this.deadLetters.keys()) {
      if (this.deadLetters.size <= deadLetterRetention) break;
      this.deadLetters.delete(id);
      const dropped = this.deadLetterKeys.get(id);
      this.deadLetterKeys.delete(id);
      if (dropped !== undefined) changes.push(remove("deadLetter", dropped));
    }
  }

  /** Drops a delayed message not yet delivered; a due or consumed one stays as it is. */
  private cancelDelayed(envelopeId: string, changes: TableChange[]) {
    const delayed = this.pending.get(envelopeId);
    if (delayed !== undefined && delayed.deliverAtMs > 0n) this.removePending(envelopeId, changes);
  }

  /**
   * Deletes up to `limit` memos whose retention ended before `nowMs`, with their
   * index entries, from the store. Returns the write, or undefined when
   * nothing was due.
   */
  expireMemos(nowMs: number, limit: number): WriteResult | undefined {
    const changes: TableChange[] = [];
    const before = { ...this.counts };
    // A memo serves up to and including its expiry time (`expiresAtMs < now` is expired), so the sweep takes the ones before now.
    for (const { key } of this.store.range("memoExpiry", { before: expiryKeysDueBy(nowMs - 1), limit })) {
      const { id, atMs } = parseExpiryKey(key);
      changes.push(remove("memoExpiry", key));
      const memo = this.memo(id);
      // A memo written again since carries a later expiry and its own index entry.
      if (memo === undefined || Number(memo.expiresAtMs) !== atMs) continue;
      this.counts.memos--;
      this.setOverlay("memo", id, undefined);
      changes.push(remove("memo", id));
    }
    if (changes.length === 0) return undefined;
    this.countChanges(before, changes);
    return this.writeChanges(changes, []);
  }

  /** Invocation ids of the journals in the store, as of the last durable write. */
  *journalIds(): Iterable<string> {
    for (const { key } of this.store.range("journal")) {
      const overlaid = this.overlay.journal.get(key);
      if (overlaid === undefined || overlaid.value !== undefined) yield key;
    }
  }

  /** Deletes journals (of invocations gone for good). */
  dropJournals(ids: readonly string[]): WriteResult | undefined {
    const changes: TableChange[] = [];
    const before = { ...this.counts };
    for (const id of ids) this.removeJournal(id, changes);
    if (changes.length === 0) return undefined;
    this.countChanges(before, changes);
    return this.writeChanges(changes, []);
  }

  /** Instances whose state expires after `afterMs` and by `byMs` (clock ms), from the expiry index. */
  *expiringBetween(afterMs: number | undefined, byMs: number): Iterable<{ type: string; key: string; atMs: number }> {
    const after = afterMs === undefined ? undefined : expiryKeysDueBy(afterMs);
    for (const { key } of this.store.range("instanceExpiry", { after, before: expiryKeysDueBy(byMs) })) {
      const { id, atMs } = parseExpiryKey(key);
      yield { ...splitInstanceKey(id), atMs };
    }
  }

  /**
   * A page of a type's instances in key order, as committed (not yet durable
   * writes included): at most `limit`, after key `after`; `next` is the
   * `after` of the next page, when there is one.
   */
  listInstances(
    type: string,
    options: { after?: string; limit: number },
  ): { instances: Array<{ key: string; state: Uint8Array }>; next?: string } {
    const prefix = instanceKey(type, "");
    const after = options.after === undefined ? undefined : instanceKey(type, options.after);
    const overlaid = [...this.overlay.instance]
      .filter(([id]) => id.startsWith(prefix) && (after === undefined || id > after))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const out: Array<{ key: string; state: Uint8Array }> = [];
    const full = () => out.length > options.limit;
    const take = (id: string, state: Uint8Array | undefined) => {
      if (state !== undefined) out.push({ key: id.slice(prefix.length), state });
    };
    let o = 0;
    for (const { key, value } of this.store.range("instance", { prefix, after })) {
      for (let e = overlaid[o]; e !== undefined && e[0] < key && !full(); e = overlaid[++o]) take(e[0], e[1].value?.state);
      if (full()) break;
      const e = overlaid[o];
      if (e !== undefined && e[0] === key) {
        take(key, e[1].value?.state);
        o++;
      } else take(key, decodeValue("instance", value).state);
      if (full()) break;
    }
    for (let e = overlaid[o]; e !== undefined && !full(); e = overlaid[++o]) take(e[0], e[1].value?.state);
    if (out.length <= options.limit) return { instances: out };
    out.length = options.limit;
    return { instances: out, next: out[out.length - 1]?.key };
  }
}
