import type { KV } from "@nats-io/kv";
import { retryPlacement } from "../storage/nats/shard-wal.js";

/** A watch of every key of a KV bucket: `stop` ends it. */
export interface BucketWatch {
  /** Resolves once the bucket's values at the start were delivered. */
  readonly ready: Promise<void>;
  stop(): void;
}

/**
 * Calls `onValue` with each key's latest value, then with every change
 * (`undefined` for a deleted or purged key). The client's ordered consumer
 * behind `kv.watch` recreates itself after a server or leader change, so
 * the view catches up on its own.
 */
export function watchBucket(kv: KV, onValue: (key: string, value: Uint8Array | undefined) => void): Promise<BucketWatch> {
  // Started again while JetStream cannot answer for the moment, so that a node starting during an election waits it out.
  return retryPlacement(() => startWatch(kv, onValue));
}

async function startWatch(kv: KV, onValue: (key: string, value: Uint8Array | undefined) => void): Promise<BucketWatch> {
  const watch = await kv.watch();
  let initialized: () => void = () => {};
  const ready = new Promise<void>((resolve) => {
    initialized = resolve;
  });
  void (async () => {
    for await (const entry of watch) {
      onValue(entry.key, entry.operation === "PUT" ? entry.value : undefined);
      // The watch marks the last of the values it started with as the first update.
      if (entry.isUpdate) initialized();
    }
  })().finally(initialized);
  let empty: boolean;
  try {
    empty = (await kv.status()).values === 0;
  } catch (err) {
    // The next attempt delivers every value again; this watch must not run beside it.
    watch.stop();
    throw err;
  }
  // An empty bucket delivers nothing to wait for.
  if (empty) initialized();
  return { ready, stop: () => watch.stop() };
}
