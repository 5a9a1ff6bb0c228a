import { create } from "@bufbuild/protobuf";
import { CommitSchema, instanceId, type LogRecord, LogRecordSchema } from "@shoal/sdk/internal";
import type { Clock } from "./clock.js";
import type { InstanceRecord } from "./shard-state.js";

/** State TTL: a timer per instance whose state expires, and the commit that clears it once due. */
export interface Expiry {
  /** (Re)arms the instance's timer for `atMs` (clock ms); the previous one is cancelled. */
  arm(type: string, key: string, atMs: number): void;
  /** Clears the instance's state if it is still due (a later write may have moved its expiry). */
  expire(type: string, key: string): void;
  /** Cancels every timer (the shard stopped). */
  cancelAll(): void;
}

/** What expiry needs from its shard. */
export interface ExpiryHost {
  readonly clock: Clock;
  /** The instance's committed record, if it has one. */
  instance(type: string, key: string): InstanceRecord | undefined;
  /**
   * A timer fired: queue the expiry behind the instance's running invocation
   * (its mailbox), which then calls `expire`, so it never clears a state an
   * invocation is about to write.
   */
  due(type: string, key: string): void;
  /** Appends records to the shard's log; throws `RecordEncodingError` at once, and records any other failure itself. */
  append(records: LogRecord[]): Promise<void>;
}

/** Creates the state-TTL timers of one shard. */
export function createExpiry(host: ExpiryHost): Expiry {
  const timers = new Map<string, () => void>();
  return {
    arm(type, key, atMs) {
      const id = instanceId(type, key);
      timers.get(id)?.();
      const cancel = host.clock.schedule(atMs - host.clock.now(), () => {
        timers.delete(id);
        host.due(type, key);
      });
      timers.set(id, cancel);
    },
    expire(type, key) {
      const instance = host.instance(type, key);
      if (instance === undefined || instance.expiresAtMs === 0 || instance.expiresAtMs > host.clock.now()) return;
      const commit = create(CommitSchema, { stateWrites: [{ address: { type, key }, clear: true }] });
      try {
        host.append([create(LogRecordSchema, { kind: { case: "commit", value: commit } })]).catch(() => {});
      } catch {
        // the shard's append has recorded it
      }
    },
    cancelAll() {
      for (const cancel of timers.values()) cancel();
    },
  };
}
