import { create } from "@bufbuild/protobuf";
import type { Logger } from "@shoal/sdk";
import { CommitSchema, type EgressMessage, type Envelope, type LogRecord, LogRecordSchema } from "@shoal/sdk/internal";

/**
 * What leaves a shard after its commit is durable: outbox entries to their
 * target shards (retried until the receiver has them durably, in sequence
 * order per target shard) and egress
 * messages to their sinks, and the record that they arrived (acknowledgements
 * and egress deliveries), which rides on the shard's next commit.
 */
export interface Deliveries {
  /**
   * Hands a committed outbox entry to its target shard, retrying with backoff
   * until it is durable there. Entries to one target shard are delivered one
   * at a time, lowest sequence first; an entry already queued is ignored.
   */
  deliverOutbox(sequence: bigint, envelope: Envelope): void;
  /** Hands a committed egress message to its sink; one that fails is emitted again on recovery. */
  emitEgress(message: EgressMessage): void;
  /** Takes the acknowledgements and egress deliveries no commit has carried yet, for the commit being built. */
  take(): DeliveredSoFar;
  /** Gives back what `take` gave, when the commit that was to carry it was not appended. */
  putBack(taken: DeliveredSoFar): void;
  /** Appends the acknowledgements and egress deliveries no commit has carried yet, if any. */
  appendPending(): Promise<void> | undefined;
  /** Cancels the pending flush (the shard closes). */
  cancelFlush(): void;
}

/** Deliveries done that the log does not record yet. */
export interface DeliveredSoFar {
  /** Outbox sequences the target shards have durably. */
  readonly acked: bigint[];
  /** Ids of egress messages their sinks have. */
  readonly egressDelivered: string[];
}

/** What deliveries need from their shard and its node. */
export interface DeliveryHost {
  readonly shard: number;
  readonly logger: Logger;
  /** Hands an outbox envelope to its target shard; resolves once the target has it durably. */
  deliver(envelope: Envelope): Promise<void>;
  /** The shard `deliver` takes an outbox envelope to. */
  targetShard(envelope: Envelope): number;
  /** Hands an egress message to its egress; resolves once delivered. */
  emitEgress(message: EgressMessage): Promise<void>;
  /** Appends records to the shard's log; throws `RecordEncodingError` at once, and records any other failure itself. */
  append(records: LogRecord[]): Promise<void>;
  /** Whether the shard was closed. */
  closed(): boolean;
  /** Whether the shard was closed or has failed: nothing more leaves it. */
  stopped(): boolean;
}

/** Acknowledgements wait this long for a commit to ride on before an idle shard writes them alone. */
const flushAfterMs = 50;

/** The outbox entries to one target shard not delivered yet, lowest sequence first. */
interface TargetQueue {
  readonly entries: Array<{ readonly sequence: bigint; readonly envelope: Envelope }>;
  /** Whether the head is being delivered (or waits for its retry). */
  busy: boolean;
}

/** Creates the deliveries of one shard. */
export function createDeliveries(host: DeliveryHost): Deliveries {
  let acked: bigint[] = [];
  let egressDelivered: string[] = [];
  let flush: NodeJS.Timeout | undefined;
  const queues = new Map<number, TargetQueue>();

  function targetOf(envelope: Envelope): number {
    try {
      return host.targetShard(envelope);
    } catch {
      // Unroutable: `deliver` rejects it and names why; it waits in a queue of its own.
      return -1;
    }
  }

  // The receiver drops an entry at or below the highest sequence it took from
  // this shard, so an entry must never reach its target after a later one:
  // one entry in flight per target shard, the next only once it is acked.
  function enqueue(sequence: bigint, envelope: Envelope) {
    const target = targetOf(envelope);
    const queue = queues.get(target) ?? { entries: [], busy: false };
    queues.set(target, queue);
    const { entries } = queue;
    let at = entries.length;
    while (at > 0 && (entries[at - 1]?.sequence ?? 0n) >= sequence) at--;
    if (entries[at]?.sequence === sequence) return;
    entries.splice(at, 0, { sequence, envelope });
    if (!queue.busy) deliverHead(target, queue, 0);
  }

  function deliverHead(target: number, queue: TargetQueue, attempt: number) {
    const head = queue.entries[0];
    if (host.stopped() || head === undefined) {
      queues.delete(target);
      return;
    }
    queue.busy = true;
    const { sequence, envelope } = head;
    // Until the receiver has it durably the entry stays in the outbox: retry
    // (the receiver drops duplicates by source and sequence).
    let delivered: Promise<void>;
    try {
      delivered = host.deliver(envelope);
    } catch (err) {
      delivered = Promise.reject(err);
    }
    delivered.then(
      () => {
        queue.entries.splice(queue.entries.indexOf(head), 1);
        acked.push(sequence);
        scheduleFlush();
        deliverHead(target, queue, 0);
      },
      (err) => {
        const delay = Math.min(5_000, 50 * 2 ** attempt);
        if (attempt === 3)
          host.logger.warn(
            `shard ${host.shard}: outbox delivery ${sequence} to shard ${target} keeps failing; retrying (later entries to that shard wait for it)`,
            { error: String(err) },
          );
        const timer = setTimeout(() => deliverHead(target, queue, attempt + 1), delay);
        timer.unref?.();
      },
    );
  }

  // Acknowledgements ride on the next commit; an idle shard writes them alone
  // shortly after, so its outbox does not grow without bound.
  function scheduleFlush() {
    if (flush !== undefined || host.closed()) return;
    flush = setTimeout(() => {
      flush = undefined;
      if (host.stopped()) return;
      appendPending()?.catch(() => {});
    }, flushAfterMs);
    flush.unref?.();
  }

  function appendPending(): Promise<void> | undefined {
    if (acked.length === 0 && egressDelivered.length === 0) return undefined;
    const commit = create(CommitSchema, { acked, egressDelivered });
    acked = [];
    egressDelivered = [];
    try {
      return host.append([create(LogRecordSchema, { kind: { case: "commit", value: commit } })]);
    } catch (err) {
      // the shard's append has recorded it
      return Promise.reject(err);
    }
  }

  return {
    deliverOutbox: enqueue,
    emitEgress(message) {
      Promise.resolve()
        .then(() => host.emitEgress(message))
        .then(
          () => {
            egressDelivered.push(message.id);
            scheduleFlush();
          },
          (err) =>
            host.logger.warn(`egress ${message.egress}: delivery of ${message.id} failed; it is retried on recovery`, {
              error: String(err),
            }),
        );
    },
    take() {
      const taken = { acked, egressDelivered };
      acked = [];
      egressDelivered = [];
      return taken;
    },
    putBack(taken) {
      acked.unshift(...taken.acked);
      egressDelivered.unshift(...taken.egressDelivered);
    },
    appendPending,
    cancelFlush() {
      if (flush !== undefined) clearTimeout(flush);
    },
  };
}
