import { create } from "@bufbuild/protobuf";
import type { Logger } from "@shoal/sdk";
import { CommitSchema, type EgressMessage, type Envelope, type LogRecord, LogRecordSchema } from "@shoal/sdk/internal";

/**
 * What leaves a shard after its commit is durable: outbox entries to their
 * target shards (retried until the receiver has them durably) and egress
 * messages to their sinks, and the record that they arrived (acknowledgements
 * and egress deliveries), which rides on the shard's next commit.
 */
export interface Deliveries {
  /** Hands a committed outbox entry to its target shard, retrying with backoff until it is durable there. */
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

/** Creates the deliveries of one shard. */
export function createDeliveries(host: DeliveryHost): Deliveries {
  let acked: bigint[] = [];
  let egressDelivered: string[] = [];
  let flush: NodeJS.Timeout | undefined;

  function deliverOutbox(sequence: bigint, envelope: Envelope, attempt: number) {
    if (host.stopped()) return;
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
        acked.push(sequence);
        scheduleFlush();
      },
      (err) => {
        const delay = Math.min(5_000, 50 * 2 ** attempt);
        if (attempt === 3)
          host.logger.warn(`shard ${host.shard}: outbox delivery ${sequence} keeps failing; retrying`, { error: String(err) });
        const timer = setTimeout(() => deliverOutbox(sequence, envelope, attempt + 1), delay);
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
    deliverOutbox(sequence, envelope) {
      deliverOutbox(sequence, envelope, 0);
    },
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
