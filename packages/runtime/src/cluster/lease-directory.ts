/**
 * The directory of shard owners in cluster mode: a watch of the lease bucket
 * (`shoal-leases`, `shard-lease.ts`). The owner of a shard is the holder of
 * its lease while that lease has not expired, by this node's clock. The
 * lease only says where to send a message: if the holder does not have the
 * shard open (taking it, giving it up), it answers Unavailable and the
 * sender retries.
 */
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { ShardDirectory } from "../node/router.js";
import { retryPlacement, storageError } from "../storage/nats/shard-wal.js";
import { type BucketWatch, watchBucket } from "./bucket-watch.js";
import { decodeLease, type LeaseHolder, leaseBucket } from "./shard-lease.js";

/** Options of `createLeaseDirectory`. */
export interface LeaseDirectoryOptions {
  /** An open connection; the directory does not close it. */
  readonly connection: NatsConnection;
  /** The lease bucket, created by `createShardLeases` first. Default `shoal-leases`. */
  readonly bucket?: string;
  /** How often expiries are checked, in ms. Default 1 000. */
  readonly pollMs?: number;
  /** The clock leases expire by, in ms since the Unix epoch. Default `Date.now`. */
  readonly now?: () => number;
  /** Where a lease that cannot be read is reported. Default: none. */
  readonly onError?: (error: Error) => void;
}

/** A `ShardDirectory` that follows the lease bucket. */
export interface LeaseDirectory extends ShardDirectory {
  /** The lease of a shard as last seen, expired or not; `undefined` when never taken. */
  holder(shard: number): LeaseHolder | undefined;
  /** Resolves once the leases present at the start were read. */
  readonly ready: Promise<void>;
  close(): void;
}

/** Watches the lease bucket; resolves once the watch is running. */
export async function createLeaseDirectory(options: LeaseDirectoryOptions): Promise<LeaseDirectory> {
  const bucket = options.bucket ?? leaseBucket();
  const now = options.now ?? Date.now;
  const leases = new Map<number, LeaseHolder>();
  /** The live owner of each shard at the last check, to tell listeners when it is gone. */
  const owners = new Map<number, string>();
  const listeners = new Set<(shard: number, node: string) => void>();

  const liveOwner = (shard: number): string | undefined => {
    const lease = leases.get(shard);
    return lease !== undefined && lease.owner !== "" && lease.expiresAtMs > now() ? lease.owner : undefined;
  };
  const check = (shard: number) => {
    const before = owners.get(shard);
    const after = liveOwner(shard);
    if (after === undefined) owners.delete(shard);
    else owners.set(shard, after);
    if (before !== undefined && before !== after) for (const listener of listeners) listener(shard, before);
  };

  let watch: BucketWatch;
  try {
    const kv = await retryPlacement(() => new Kvm(jetstream(options.connection)).open(bucket));
    watch = await watchBucket(kv, (key, value) => {
      const shard = Number(key);
      if (!Number.isInteger(shard)) return;
      if (value === undefined) leases.delete(shard);
      else {
        try {
          leases.set(shard, decodeLease(bucket, shard, 0, value));
        } catch (err) {
          options.onError?.(err as Error);
          return;
        }
      }
      check(shard);
    });
  } catch (err) {
    throw storageError(`cannot watch the lease bucket ${bucket}`, err);
  }
  const poll = setInterval(() => {
    for (const shard of [...owners.keys()]) check(shard);
  }, options.pollMs ?? 1_000);
  poll.unref();

  return {
    ownerOf: liveOwner,
    // The leases are the truth: a node's own view of what it opened is its processors, not this.
    setOwner() {},
    onOwnerGone(listener) {
      listeners.add(listener);
      return () => void listeners.delete(listener);
    },
    holder: (shard) => leases.get(shard),
    ready: watch.ready,
    close() {
      clearInterval(poll);
      watch.stop();
    },
  };
}
