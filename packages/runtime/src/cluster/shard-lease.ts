/**
 * Shard leases in cluster mode (DESIGN §9): which node tries to own a shard.
 *
 * A lease is a key of a JetStream KV bucket (`shoal-leases`, one key per
 * shard) whose value holds the owner, the epoch (one more on every change of
 * owner) and the expiry, in ms of the holder's clock. The lease does not make
 * ownership safe, the shard's WAL does: a new owner writes a fence to the log,
 * and a stale owner's appends are refused there (`shard-wal.ts`). A lease only
 * keeps nodes from contending all the time, so two nodes that both believe
 * they hold a shard (clock skew, a read during a leader change) are harmless.
 *
 * Why each write is safe on nats-server 2.9 with R3:
 * - Taking a key never written is `kv.create`: a publish expecting the
 *   subject's last sequence to be 0. The server checks that expectation (0,
 *   unlike other values) when each replica applies the entry, against the
 *   same stored state on every replica, so of two creates exactly one is
 *   stored.
 * - Every other write (taking an expired lease, renewing, releasing) cannot
 *   use `kv.update(revision)`: 2.9 checks a non-zero per-subject expectation
 *   on the leader only, before replicating, so two updates of the same
 *   revision can both pass. Instead the writer reads the bucket stream's last
 *   sequence L, then the key (its latest message, at or below L), decides,
 *   and publishes the new value expecting the stream's last sequence to be L.
 *   That expectation is checked as each replica applies the entry; if it
 *   holds, nothing was written to the bucket since L, so the key was still as
 *   read. Of two writers that read the same L, one is stored. A write to
 *   another shard's key also moves L: the writer reads again and retries.
 * - Nothing here deletes a key (`kv.create` on a delete marker falls back to
 *   `kv.update` of the marker's revision): releasing writes an expired value
 *   instead, and a key deleted by hand is taken like an expired lease.
 */
import { JetStreamApiCodes, JetStreamApiError, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { defaults } from "../config/defaults.js";
import { retryPlacement, storageError } from "../storage/nats/shard-wal.js";
import { StorageError } from "../storage/storage.js";

/** The lease bucket of the nodes whose NATS names begin with `prefix` (`storage.prefix`). */
export function leaseBucket(prefix: string = defaults.storage.prefix): string {
  return `${prefix}-leases`;
}

/** Options of `createShardLeases`. */
export interface ShardLeasesOptions {
  /** An open connection to the NATS servers; the leases do not close it. */
  readonly connection: NatsConnection;
  /** This node's name, written into the leases it takes. */
  readonly owner: string;
  /** How long a lease lasts from its last renewal, in ms. Default 10000. */
  readonly ttlMs?: number;
  /** The KV bucket. Default `shoal-leases`. */
  readonly bucket?: string;
  /** Replicas of the bucket, when this creates it. Default: 3 when the server is part of a cluster, else 1. */
  readonly replicas?: number;
  /** How long a request to JetStream waits for its answer, in ms. Default 5000. */
  readonly timeoutMs?: number;
  /** The clock leases expire by, in ms since the Unix epoch. Default `Date.now`. */
  readonly now?: () => number;
  /**
   * Runs after a lease was read and before the write it decided on: tests
   * use it to let two nodes read before either writes. Default: none.
   */
  readonly beforeWrite?: (shard: number) => Promise<void>;
}

/** Who holds a shard's lease, as its value says. */
export interface LeaseHolder {
  readonly shard: number;
  readonly owner: string;
  /** One more each time the lease changes owner (a release and re-take by the same node counts too). */
  readonly epoch: bigint;
  /** When the lease lapses unless renewed, in ms since the Unix epoch. */
  readonly expiresAtMs: number;
}

/** A lease this node holds. */
export interface Lease extends LeaseHolder {
  /** The sequence of the lease's message in the bucket's stream: a renewal expects it to be the key's latest still. */
  readonly revision: bigint;
}

/** One node's view of the shard leases. */
export interface ShardLeases {
  /**
   * Takes the shard's lease when nobody holds it or its holder's lease
   * expired (by this node's clock), with the next epoch. A lease held under
   * this node's name is taken again with the next epoch too: the node may
   * have restarted, and its earlier process may still be writing. Returns
   * `undefined` when another node holds it or won a race for it.
   */
  acquire(shard: number): Promise<Lease | undefined>;
  /** Extends a lease this node holds; `undefined` when another node took it meanwhile. */
  renew(lease: Lease): Promise<Lease | undefined>;
  /** Gives the lease up at once, so another node can take it without waiting for the expiry. */
  release(lease: Lease): Promise<void>;
  /** Who holds the shard's lease, expired or not; `undefined` when it was never taken. */
  holder(shard: number): Promise<LeaseHolder | undefined>;
}

/** A read of a key and of the bucket's last sequence at or after it. */
interface Snapshot {
  readonly lastSequence: number;
  readonly current: Lease | undefined;
}

/** Creates the lease bucket if needed and returns this node's view of it. */
export async function createShardLeases(options: ShardLeasesOptions): Promise<ShardLeases> {
  const nc = options.connection;
  const bucket = options.bucket ?? leaseBucket();
  const stream = `KV_${bucket}`;
  const ttlMs = options.ttlMs ?? 10_000;
  const now = options.now ?? Date.now;
  const timeout = options.timeoutMs ?? 5_000;
  const js = jetstream(nc, { timeout });
  let kv: Awaited<ReturnType<Kvm["create"]>>;
  try {
    kv = await retryPlacement(() =>
      new Kvm(js).create(bucket, { history: 1, replicas: options.replicas ?? (nc.info?.cluster === undefined ? 1 : 3) }),
    );
  } catch (err) {
    throw storageError(`cannot create or open the lease bucket ${bucket}`, err);
  }
  const jsm = await retryPlacement(() => jetstreamManager(nc, { timeout })).catch((err: unknown) => {
    throw storageError(`cannot reach JetStream for the lease bucket ${bucket}`, err);
  });
  const subject = (shard: number) => `$KV.${bucket}.${shard}`;

  async function read(shard: number): Promise<Snapshot> {
    try {
      // The stream's last sequence first: the key read after it is at least as recent.
      const lastSequence = (await jsm.streams.info(stream)).state.last_seq;
      // From the stream leader, not a direct get (which a lagging replica may answer).
      const message = await jsm.streams.getMessage(stream, { last_by_subj: subject(shard) }).catch((err: unknown) => {
        if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound) return null;
        throw err;
      });
      if (message === null) return { lastSequence, current: undefined };
      const operation = message.header?.get("KV-Operation");
      if (operation === "DEL" || operation === "PURGE") {
        // Deleted by hand (`nats kv del`): free, and taken with the stream-wide expectation like an expired lease.
        return {
          lastSequence: Math.max(lastSequence, message.seq),
          current: { shard, owner: "", epoch: 0n, expiresAtMs: 0, revision: BigInt(message.seq) },
        };
      }
      // A write after the stream's info is at most the key's: expecting it leaves nothing unread.
      return { lastSequence: Math.max(lastSequence, message.seq), current: decodeLease(bucket, shard, message.seq, message.data) };
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw storageError(`cannot read the lease of shard ${shard} in bucket ${bucket}`, err);
    }
  }

  /** Writes `value` if nothing was written to the bucket after `lastSequence`; `undefined` when something was. */
  async function writeIfUnchanged(shard: number, lastSequence: number, value: LeaseHolder): Promise<Lease | undefined> {
    try {
      const ack = await js.publish(subject(shard), encodeLease(value), { expect: { lastSequence } });
      return { ...value, revision: BigInt(ack.seq) };
    } catch (err) {
      if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamWrongLastSequence) return undefined;
      throw storageError(`cannot write the lease of shard ${shard} in bucket ${bucket}`, err);
    }
  }

  /**
   * Reads the key, lets `decide` say what to write, and writes it expecting
   * the stream unchanged since the read; reads again when another key moved
   * the stream. `decide` returns `undefined` to write nothing.
   */
  async function update(shard: number, decide: (current: Lease | undefined) => LeaseHolder | undefined): Promise<Lease | undefined> {
    for (let attempt = 0; attempt < 50; attempt++) {
      const { lastSequence, current } = await read(shard);
      const value = decide(current);
      if (value === undefined) return undefined;
      await options.beforeWrite?.(shard);
      const written = await writeIfUnchanged(shard, lastSequence, value);
      if (written !== undefined) return written;
    }
    throw new StorageError(
      `the lease bucket ${bucket} changed under 50 attempts in a row to write the lease of shard ${shard}; too many nodes renew at once: raise the lease TTL`,
    );
  }

  const mine = (lease: Lease) => (current: Lease | undefined) => current !== undefined && current.revision === lease.revision;

  return {
    async acquire(shard) {
      const { current } = await read(shard);
      if (current === undefined) {
        const value: LeaseHolder = { shard, owner: options.owner, epoch: 1n, expiresAtMs: now() + ttlMs };
        await options.beforeWrite?.(shard);
        try {
          const revision = await kv.create(String(shard), encodeLease(value));
          return { ...value, revision: BigInt(revision) };
        } catch (err) {
          // Another node created it first: it holds the lease.
          if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamWrongLastSequence) return undefined;
          throw storageError(`cannot create the lease of shard ${shard} in bucket ${bucket}`, err);
        }
      }
      return update(shard, (latest) => {
        if (latest === undefined) return undefined;
        if (latest.expiresAtMs > now() && latest.owner !== options.owner) return undefined;
        return { shard, owner: options.owner, epoch: latest.epoch + 1n, expiresAtMs: now() + ttlMs };
      });
    },
    renew(lease) {
      return update(lease.shard, (latest) => (mine(lease)(latest) ? { ...holderOf(lease), expiresAtMs: now() + ttlMs } : undefined));
    },
    async release(lease) {
      await update(lease.shard, (latest) => (mine(lease)(latest) ? { ...holderOf(lease), expiresAtMs: 0 } : undefined));
    },
    async holder(shard) {
      const { current } = await read(shard);
      return current === undefined ? undefined : holderOf(current);
    },
  };
}

const holderOf = ({ shard, owner, epoch, expiresAtMs }: LeaseHolder): LeaseHolder => ({ shard, owner, epoch, expiresAtMs });

function encodeLease(value: LeaseHolder): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ owner: value.owner, epoch: value.epoch.toString(), expiresAtMs: value.expiresAtMs }));
}

/** Decodes a lease value, naming the bucket, key and revision of one that is not a Shoal lease. */
export function decodeLease(bucket: string, shard: number, revision: number, data: Uint8Array): Lease {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(data));
  } catch {
    value = undefined;
  }
  const v = value as { owner?: unknown; epoch?: unknown; expiresAtMs?: unknown } | undefined;
  if (
    typeof v !== "object" ||
    v === null ||
    typeof v.owner !== "string" ||
    typeof v.epoch !== "string" ||
    !/^\d+$/.test(v.epoch) ||
    typeof v.expiresAtMs !== "number"
  ) {
    throw new StorageError(
      `the lease of shard ${shard} in bucket ${bucket} (revision ${revision}) is not a Shoal lease (${data.length} bytes; expected {"owner","epoch","expiresAtMs"}); only Shoal nodes may write this bucket: delete the key (nats kv del ${bucket} ${shard}) to free it`,
    );
  }
  return { shard, owner: v.owner, epoch: BigInt(v.epoch), expiresAtMs: v.expiresAtMs, revision: BigInt(revision) };
}
