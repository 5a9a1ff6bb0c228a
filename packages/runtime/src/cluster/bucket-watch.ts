import type { KV } from "@nats-io/kv";

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
export async function watchBucket(kv: KV, onValue: (key: string, value: Uint8Array | undefined) => void): Promise<BucketWatch> {
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
  // An empty bucket delivers nothing to wait for.
  if ((await kv.status()).values === 0) initialized();
  return { ready, stop: () => watch.stop() };
}
