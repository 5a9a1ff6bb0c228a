import { create } from "@bufbuild/protobuf";
import {
  type CallResult,
  type Commit,
  type DeadLetter,
  type EgressMessage,
  type Envelope,
  instanceId,
  type LogRecord,
  type Memo,
  type ShardSnapshot,
  ShardSnapshotSchema,
} from "@shoal/sdk/internal";

// How the old runtime (up to commit c48f512) folded a shard's log into its
// state: `shard/shard-state.ts` as it was then, frozen as the meaning of the
// old format's records. The upgrade of an old data directory folds each
// shard's latest snapshot and the records after it with this, exactly as the
// old runtime recovered, and writes the result into the new store.

/** One instance's committed state. */
interface InstanceRecord {
  readonly type: string;
  readonly key: string;
  readonly state: Uint8Array;
  /** 0: never expires. */
  readonly expiresAtMs: number;
}

/** The handler of the runtime's message that cancels a delayed message; payload: the message id (UTF-8). */
const cancelHandler = "$cancel";

/** Dead letters a shard kept (the most recent). */
const deadLetterRetention = 1000;

/**
 * A shard's state as the old runtime rebuilt it: its latest snapshot, then
 * every record after it applied in log order.
 */
export class LegacyShardState {
  readonly instances = new Map<string, InstanceRecord>();
  /** Accepted and not consumed, in log order (delayed ones included). */
  readonly pending = new Map<string, Envelope>();
  /** Outbox entries not yet acknowledged by their receiver, by sequence. */
  readonly outbox = new Map<bigint, Envelope>();
  readonly memos = new Map<string, Memo>();
  /** Highest outbox sequence received per source shard. */
  readonly watermarks = new Map<number, bigint>();
  /** Results of calls of invocations that have not committed yet. */
  readonly journals = new Map<string, CallResult[]>();
  /** Egress messages committed and not yet handed to their egress. */
  readonly egress = new Map<string, EgressMessage>();
  /** Messages that failed for good, oldest first, by envelope id. */
  readonly deadLetters = new Map<string, DeadLetter>();
  nextOutboxSequence = 1n;
  /** The last log sequence applied. */
  sequence = 0n;

  constructor(readonly shard: number) {}

  /** Whether an envelope from another shard's outbox was already received. */
  isDuplicate(envelope: Envelope): boolean {
    const source = envelope.source;
    if (source === undefined) return false;
    return source.sequence <= (this.watermarks.get(source.shard) ?? 0n);
  }

  private noteSource(envelope: Envelope) {
    const source = envelope.source;
    if (source !== undefined) this.watermarks.set(source.shard, source.sequence);
  }

  /** Applies one record; returns false when it was a duplicate and changed nothing. */
  apply(record: LogRecord, sequence: bigint): boolean {
    this.sequence = sequence;
    switch (record.kind.case) {
      case "input": {
        const envelope = record.kind.value.envelope;
        if (envelope === undefined || this.isDuplicate(envelope)) return false;
        this.noteSource(envelope);
        if (envelope.handler === cancelHandler) {
          this.cancelDelayed(new TextDecoder().decode(envelope.payload));
          return true;
        }
        this.pending.set(envelope.id, envelope);
        return true;
      }
      case "callResult": {
        const input = record.kind.value;
        const source = input.source;
        if (source !== undefined) {
          if (source.sequence <= (this.watermarks.get(source.shard) ?? 0n)) return false;
          this.watermarks.set(source.shard, source.sequence);
        }
        const result = input.result;
        if (result === undefined) return false;
        const journal = this.journals.get(input.invocationId) ?? [];
        if (!journal.some((r) => r.callId === result.callId)) journal.push(result);
        this.journals.set(input.invocationId, journal);
        return true;
      }
      case "commit":
        this.applyCommit(record.kind.value);
        return true;
      case "fence":
        return true;
      default:
        return false;
    }
  }

  private applyCommit(commit: Commit) {
    for (const id of commit.consumed) this.pending.delete(id);
    for (const write of commit.stateWrites) {
      const address = write.address;
      if (address === undefined) continue;
      const id = instanceId(address.type, address.key);
      if (write.clear) this.instances.delete(id);
      else this.instances.set(id, { type: address.type, key: address.key, state: write.state, expiresAtMs: Number(write.expiresAtMs) });
    }
    for (const entry of commit.outbox) {
      if (entry.envelope !== undefined) this.outbox.set(entry.sequence, entry.envelope);
      if (entry.sequence >= this.nextOutboxSequence) this.nextOutboxSequence = entry.sequence + 1n;
    }
    for (const cancellation of commit.cancellations) this.cancelDelayed(cancellation.envelopeId);
    for (const message of commit.egress) this.egress.set(message.id, message);
    for (const memo of commit.memos) this.memos.set(memo.id, memo);
    for (const sequence of commit.acked) this.outbox.delete(sequence);
    for (const id of commit.finishedInvocations) this.journals.delete(id);
    for (const id of commit.egressDelivered) this.egress.delete(id);
    for (const letter of commit.deadLetters) this.addDeadLetter(letter);
  }

  private addDeadLetter(letter: DeadLetter) {
    this.deadLetters.delete(letter.envelopeId);
    this.deadLetters.set(letter.envelopeId, letter);
    for (const id of this.deadLetters.keys()) {
      if (this.deadLetters.size <= deadLetterRetention) break;
      this.deadLetters.delete(id);
    }
  }

  /** Drops a delayed message not yet delivered; a due or consumed one stays as it is. */
  private cancelDelayed(envelopeId: string) {
    const delayed = this.pending.get(envelopeId);
    if (delayed !== undefined && delayed.deliverAtMs > 0n) this.pending.delete(envelopeId);
  }

  toSnapshot(): ShardSnapshot {
    return create(ShardSnapshotSchema, {
      shard: this.shard,
      sequence: this.sequence,
      instances: [...this.instances.values()].map((i) => ({
        type: i.type,
        key: i.key,
        state: i.state,
        expiresAtMs: BigInt(i.expiresAtMs),
      })),
      pending: [...this.pending.values()],
      outbox: [...this.outbox].map(([sequence, envelope]) => ({ sequence, envelope })),
      memos: [...this.memos.values()],
      watermarks: [...this.watermarks].map(([shard, sequence]) => ({ shard, sequence })),
      journals: [...this.journals].map(([invocationId, results]) => ({ invocationId, results })),
      nextOutboxSequence: this.nextOutboxSequence,
      egress: [...this.egress.values()],
      deadLetters: [...this.deadLetters.values()],
    });
  }

  static fromSnapshot(snapshot: ShardSnapshot): LegacyShardState {
    const state = new LegacyShardState(snapshot.shard);
    state.sequence = snapshot.sequence;
    for (const i of snapshot.instances) {
      state.instances.set(instanceId(i.type, i.key), { type: i.type, key: i.key, state: i.state, expiresAtMs: Number(i.expiresAtMs) });
    }
    for (const envelope of snapshot.pending) state.pending.set(envelope.id, envelope);
    for (const entry of snapshot.outbox) if (entry.envelope !== undefined) state.outbox.set(entry.sequence, entry.envelope);
    for (const memo of snapshot.memos) state.memos.set(memo.id, memo);
    for (const w of snapshot.watermarks) state.watermarks.set(w.shard, w.sequence);
    for (const j of snapshot.journals) state.journals.set(j.invocationId, [...j.results]);
    for (const message of snapshot.egress) state.egress.set(message.id, message);
    for (const letter of snapshot.deadLetters) state.addDeadLetter(letter);
    state.nextOutboxSequence = snapshot.nextOutboxSequence > 0n ? snapshot.nextOutboxSequence : 1n;
    return state;
  }
}
