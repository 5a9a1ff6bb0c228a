/**
 * Which shards a node of a cluster owns (DESIGN §9): membership heartbeats,
 * shard leases, and the node's fair share of the shards.
 *
 * Membership. Every node writes its own key of the KV bucket `shoal-nodes`
 * (its id, ingress URL, the shards it holds with their lease epochs, and an
 * expiry) every `leaseMs / 3`, and watches the others'. A node whose record
 * expired, or was deleted on a graceful stop, is not live.
 *
 * Fair share. The live nodes, sorted by id, split the shards: each gets
 * `floor(shards / nodes)`, and the first `shards mod nodes` one more, so no
 * node holds more than `ceil(shards / nodes)` and every node computes the
 * same targets from the same membership. A node under its target takes
 * shards whose lease is free or expired (`shard-lease.ts`) and opens them
 * (`NodeRuntime.acquireShard`, which fences the shard's WAL); a node over its
 * target for as long as a lease lasts (5 s at most) gives its extra shards up gracefully: first the shard
 * (`releaseShard`: its waiting requests are answered Unavailable and retried
 * elsewhere), then the lease, so the next owner takes it at once.
 *
 * Leases are renewed every `leaseMs / 3`. A node releases a shard at once when
 * its lease expired before it was renewed (the node was paused, or NATS was
 * out of reach), when a renewal finds the lease taken, and when the shard
 * stopped on its own (its WAL refused an append with `FencedError`: another
 * node fenced it). None of this is what makes ownership safe: the WAL's fence
 * is. Two nodes that both believe they own a shard only refuse each other's
 * appends until one gives up.
 */
import { jetstream } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "@shoal/sdk";
import { defaults } from "../config/defaults.js";
import type { NodeRuntime } from "../node/runtime.js";
import { retryPlacement, storageError } from "../storage/nats/shard-wal.js";
import { type BucketWatch, watchBucket } from "./bucket-watch.js";
import type { LeaseDirectory } from "./lease-directory.js";
import type { Lease, ShardLeases } from "./shard-lease.js";

/** The membership bucket of the nodes whose NATS names begin with `prefix` (`storage.prefix`). */
export function membershipBucket(prefix: string = defaults.storage.prefix): string {
  return `${prefix}-nodes`;
}

/** A node's record in the membership bucket. */
export interface NodeRecord {
  readonly node: string;
  /** The node's ingress, `http://host:port`. */
  readonly ingress: string;
  readonly heartbeatAtMs: number;
  readonly expiresAtMs: number;
  /** The shards it holds, with their lease epochs. */
  readonly shards: ReadonlyArray<{ readonly shard: number; readonly epoch: string }>;
}

/** Options of `startShardCoordinator`. */
export interface ShardCoordinatorOptions {
  /** An open connection; the coordinator does not close it. */
  readonly connection: NatsConnection;
  /** The node whose shards this coordinates (started, with no shard of its own yet). */
  readonly runtime: Pick<NodeRuntime, "nodeId" | "shards" | "ownership" | "acquireShard" | "releaseShard">;
  /** This node's leases (`createShardLeases` with `owner` = the node's id and `ttlMs` = `leaseMs`). */
  readonly leases: ShardLeases;
  /** The directory of owners, for which leases are free or expired. */
  readonly directory: LeaseDirectory;
  /** This node's ingress URL, written into its membership record. */
  readonly ingress: string;
  /** How long a lease and a membership record last without renewal, in ms. */
  readonly leaseMs: number;
  /** The membership bucket. Default `shoal-nodes`. */
  readonly bucket?: string;
  /** Replicas of the membership bucket, when this creates it. Default: 3 on a cluster, 1 on one server. */
  readonly replicas?: number;
  readonly logger: Logger;
  /** The clock, in ms since the Unix epoch. Default `Date.now`. */
  readonly now?: () => number;
}

/** A running coordinator. */
export interface ShardCoordinator {
  /** The live nodes as this node sees them, by id (itself included). */
  nodes(): ReadonlyMap<string, NodeRecord>;
  /** Releases every shard and lease this node holds and leaves the membership, so other nodes take over at once. */
  stop(): Promise<void>;
}

/** The longest a node over its share waits before it gives the extra shards up. */
const overShareWaitMaxMs = 5_000;

/** Shards taken at once in one round: the lease bucket is one stream, and concurrent writers to it retry. */
const takeAtOnce = 4;

/**
 * Joins the cluster's membership, takes this node's fair share of the free
 * shards, and keeps coordinating until `stop`. Resolves after that first round.
 */
export async function startShardCoordinator(options: ShardCoordinatorOptions): Promise<ShardCoordinator> {
  const { runtime, leases, directory, leaseMs, logger } = options;
  const nodeId = runtime.nodeId;
  const bucket = options.bucket ?? membershipBucket();
  const now = options.now ?? Date.now;
  const nc = options.connection;
  const renewEveryMs = Math.max(1, Math.floor(leaseMs / 3));
  const tickMs = Math.min(1_000, renewEveryMs);

  let kv: KV;
  try {
    kv = await retryPlacement(() =>
      new Kvm(jetstream(nc)).create(bucket, { history: 1, replicas: options.replicas ?? (nc.info?.cluster === undefined ? 1 : 3) }),
    );
  } catch (err) {
    throw storageError(`cannot create or open the membership bucket ${bucket}`, err);
  }
  const members = new Map<string, NodeRecord>();
  let watch: BucketWatch;
  try {
    watch = await watchBucket(kv, (key, value) => {
      if (value === undefined) members.delete(key);
      else {
        try {
          members.set(key, JSON.parse(new TextDecoder().decode(value)) as NodeRecord);
        } catch {
          logger.warn(`cluster: the record of node ${key} in bucket ${bucket} is not JSON; only Shoal nodes may write this bucket`);
        }
      }
    });
    await watch.ready;
  } catch (err) {
    throw storageError(`cannot watch the membership bucket ${bucket}`, err);
  }

  /** The leases this node holds, by shard. */
  const held = new Map<number, Lease>();
  /** Shards whose lease is held and which are being opened: not open yet, and not fenced either. */
  const opening = new Set<number>();
  let lastHeartbeat = 0;
  /** Since when this node has held more than its share (undefined: it does not). */
  let overShareSinceMs: number | undefined;
  let stopped = false;
  let owned = "";

  async function heartbeat() {
    const at = now();
    const record: NodeRecord = {
      node: nodeId,
      ingress: options.ingress,
      heartbeatAtMs: at,
      expiresAtMs: at + leaseMs,
      shards: [...held.values()].sort((a, b) => a.shard - b.shard).map((l) => ({ shard: l.shard, epoch: l.epoch.toString() })),
    };
    await kv.put(nodeId, JSON.stringify(record));
    lastHeartbeat = at;
    members.set(nodeId, record);
  }

  function liveNodes(): string[] {
    const at = now();
    const live = new Set([nodeId]);
    for (const [id, record] of members) if (record.expiresAtMs > at) live.add(id);
    return [...live].sort();
  }

  function target(): number {
    const live = liveNodes();
    const index = live.indexOf(nodeId);
    return Math.floor(runtime.shards / live.length) + (index < runtime.shards % live.length ? 1 : 0);
  }

  /** Gives a shard up: the shard first (nothing is written after), then the lease, so the next owner needs no expiry. */
  async function giveUp(shard: number, why: string) {
    const lease = held.get(shard);
    held.delete(shard);
    logger.info(`cluster: node ${nodeId} gives shard ${shard} up (${why})`);
    await runtime
      .releaseShard(shard)
      .catch((err: unknown) => logger.warn(`cluster: releasing shard ${shard} failed`, { error: String(err) }));
    if (lease !== undefined)
      await leases
        .release(lease)
        .catch((err: unknown) => logger.warn(`cluster: releasing the lease of shard ${shard} failed; it expires`, { error: String(err) }));
  }

  async function renew(lease: Lease) {
    if (now() >= lease.expiresAtMs) return giveUp(lease.shard, "its lease expired before it was renewed");
    if (!runtime.ownership.owns(lease.shard) && !opening.has(lease.shard))
      return giveUp(lease.shard, "it stopped here: another node fenced its log");
    if (lease.expiresAtMs - now() > leaseMs - renewEveryMs) return;
    try {
      const renewed = await leases.renew(lease);
      // Given up meanwhile (a rebalance): nothing more to do.
      if (held.get(lease.shard) !== lease) return;
      if (renewed === undefined) return giveUp(lease.shard, "another node took its lease");
      held.set(lease.shard, renewed);
    } catch (err) {
      logger.warn(`cluster: renewing the lease of shard ${lease.shard} failed; it is retried until the lease expires`, {
        error: String(err),
      });
    }
  }

  async function take(shard: number) {
    const lease = await leases.acquire(shard);
    if (lease === undefined) return;
    held.set(shard, lease);
    opening.add(shard);
    try {
      await runtime.acquireShard(shard);
      logger.info(`cluster: node ${nodeId} took shard ${shard} (lease epoch ${lease.epoch})`);
    } catch (err) {
      logger.warn(`cluster: opening shard ${shard} failed; its lease is released and taking it is retried`, { error: String(err) });
      await giveUp(shard, "it could not be opened");
    } finally {
      opening.delete(shard);
    }
  }

  /** Shards whose lease is free or expired (or still in this node's name from an earlier process), spread by node id. */
  function freeShards(): number[] {
    const at = now();
    const free: number[] = [];
    let offset = 0;
    for (const c of nodeId) offset = (offset * 31 + c.charCodeAt(0)) % runtime.shards;
    for (let i = 0; i < runtime.shards; i++) {
      const shard = (offset + i) % runtime.shards;
      if (held.has(shard)) continue;
      const lease = directory.holder(shard);
      if (lease === undefined || lease.owner === "" || lease.expiresAtMs <= at || lease.owner === nodeId) free.push(shard);
    }
    return free;
  }

  /** Heartbeat and renewals, on their own so that a long round (a shard restored from its snapshot) does not let leases lapse. */
  async function upkeep() {
    if (now() - lastHeartbeat >= renewEveryMs) await heartbeat();
    for (const lease of [...held.values()]) {
      if (stopped) return;
      if (held.get(lease.shard) === lease) await renew(lease);
    }
  }

  async function round() {
    const share = target();
    if (held.size > share && liveNodes().length > 1) {
      // Giving a shard up only evens the load, and moving it costs its
      // requests a retry and the next owner a restore: wait until the
      // membership has said the same for a lease's length (5 s at most, for
      // a node that joins), so that a record late for a moment (a
      // nats-server restarting) moves nothing twice.
      overShareSinceMs ??= now();
      if (now() - overShareSinceMs >= Math.min(leaseMs, overShareWaitMaxMs)) {
        const extras = [...held.keys()].sort((a, b) => b - a).slice(0, held.size - share);
        for (const shard of extras) if (!stopped) await giveUp(shard, `this node holds more than its share of ${share}`);
      }
    } else overShareSinceMs = undefined;
    const free = freeShards();
    while (!stopped && free.length > 0 && held.size < share)
      await Promise.all(free.splice(0, Math.min(takeAtOnce, share - held.size)).map(take));
    const list = [...held.keys()].sort((a, b) => a - b).join(",");
    if (list !== owned) {
      owned = list;
      logger.info(`cluster: node ${nodeId} owns shards [${list}] (share ${share} of ${runtime.shards} among ${liveNodes().length} nodes)`);
      await heartbeat();
    }
  }

  /** A loop of `step` every tick: steps never overlap, and a tick during one is skipped. */
  const loop = (what: string, step: () => Promise<void>) => {
    let current: Promise<void> | undefined;
    const tick = () => {
      if (current !== undefined || stopped) return current;
      current = step()
        .catch((err: unknown) => logger.warn(`cluster: ${what} failed; the next one retries`, { error: String(err) }))
        .finally(() => {
          current = undefined;
        });
      return current;
    };
    return { tick, done: () => current ?? Promise.resolve() };
  };
  const upkeeping = loop("a heartbeat or lease renewal", upkeep);
  const rounds = loop("a coordination round", round);
  await directory.ready;
  await upkeeping.tick();
  const timer = setInterval(() => {
    void upkeeping.tick();
    void rounds.tick();
  }, tickMs);
  // The first round done before the node says it serves: a node alone (or back under its own id) has its shards open by then.
  await rounds.tick();

  return {
    nodes() {
      const live = new Map<string, NodeRecord>();
      for (const id of liveNodes()) {
        const record = members.get(id);
        if (record !== undefined) live.set(id, record);
      }
      return live;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      await Promise.all([upkeeping.done(), rounds.done()]);
      for (const shard of [...held.keys()]) await giveUp(shard, "the node stops");
      watch.stop();
      await kv
        .delete(nodeId)
        .catch((err: unknown) => logger.warn("cluster: leaving the membership failed; the record expires", { error: String(err) }));
      logger.info(`cluster: node ${nodeId} left the cluster and released its shards`);
    },
  };
}
