/**
 * The cluster as NATS records it, for `shoal status` (issue 10, operations):
 * the live nodes from the membership bucket `<prefix>-nodes` (each node writes
 * its own key: `{node, ingress, heartbeatAtMs, expiresAtMs, shards: [{shard,
 * epoch}]}`), every shard's lease from `<prefix>-leases`, each WAL stream's
 * last sequence and, when the inputs stream `<prefix>-inputs` exists, the
 * inputs waiting for each shard. Read-only: nothing here creates a bucket or
 * a stream, so a status on a deployment that has none says so instead of
 * making them.
 */
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { defaults } from "../config/defaults.js";
import { storageError } from "../storage/nats/shard-wal.js";
import { membershipBucket } from "./shard-coordinator.js";
import { decodeLease, type LeaseHolder, leaseBucket } from "./shard-lease.js";

/** A node's record in the membership bucket, as it wrote it. */
export interface NodeRecord {
  readonly node: string;
  /** Where its ingress listens, `http://host:port`. */
  readonly ingress: string;
  readonly heartbeatAtMs: number;
  /** Past this (by the reader's clock), the node is taken for dead. */
  readonly expiresAtMs: number;
  /** The shards it says it owns, with the epoch it opened each at. */
  readonly shards: ReadonlyArray<{ readonly shard: number; readonly epoch: bigint }>;
}

/** One shard as NATS records it. */
export interface ShardRecord {
  readonly shard: number;
  /** Its lease, expired or not; absent when it was never taken. */
  readonly lease?: LeaseHolder;
  /** The last sequence of its WAL stream; 0 when the stream does not exist yet. */
  readonly walLastSequence: bigint;
  /** Inputs in the inputs stream not yet consumed by the shard's owner; absent when that stream does not exist. */
  readonly pendingInputs?: bigint;
}

/** What {@link ClusterStatusReader.read} returns. */
export interface ClusterRecords {
  /** Live nodes (records not expired), by node id. */
  readonly nodes: readonly NodeRecord[];
  /** Every shard, 0 to `shards - 1`. */
  readonly shards: readonly ShardRecord[];
  /** Whether the membership bucket exists (it does once a node of this version ran). */
  readonly membership: boolean;
}

/** Options of {@link createClusterStatusReader}. */
export interface ClusterStatusOptions {
  /** An open connection; the reader does not close it. */
  readonly connection: NatsConnection;
  /** The deployment's shard count. */
  readonly shards: number;
  /** Prefix of the buckets and streams. Default `shoal`. */
  readonly prefix?: string;
  /** How long a request to JetStream waits, in ms. Default 5000. */
  readonly timeoutMs?: number;
  /** The clock node records expire by. Default `Date.now`. */
  readonly now?: () => number;
}

/** Reads the cluster's records from NATS. */
export interface ClusterStatusReader {
  /** Rejects with `StorageError` naming the bucket or stream that could not be read. */
  read(): Promise<ClusterRecords>;
}

/** Creates a reader of the cluster's records (membership, leases, WALs, inputs) on `options.connection`. */
export function createClusterStatusReader(options: ClusterStatusOptions): ClusterStatusReader {
  const prefix = options.prefix ?? defaults.storage.prefix;
  const timeout = options.timeoutMs ?? 5_000;
  const now = options.now ?? Date.now;
  const js = jetstream(options.connection, { timeout });
  const names = {
    nodes: membershipBucket(prefix),
    leases: leaseBucket(prefix),
    inputs: `${prefix}-inputs`,
    wal: (shard: number) => `${prefix}-wal-${shard}`,
    input: (shard: number) => `${prefix}.in.${shard}`,
  };

  /** The bucket, or undefined when its stream is not among `streams` (never created). */
  async function bucket(name: string, streams: ReadonlyMap<string, unknown>): Promise<KV | undefined> {
    if (!streams.has(`KV_${name}`)) return undefined;
    try {
      return await new Kvm(js).open(name);
    } catch (err) {
      throw storageError(`cannot open the KV bucket ${name}`, err);
    }
  }

  async function nodes(streams: ReadonlyMap<string, unknown>): Promise<{ membership: boolean; nodes: NodeRecord[] }> {
    const kv = await bucket(names.nodes, streams);
    if (kv === undefined) return { membership: false, nodes: [] };
    const found: NodeRecord[] = [];
    try {
      // A set: a key written again while the bucket is listed (a heartbeat) can be listed twice.
      const keys = new Set<string>();
      for await (const key of await kv.keys()) keys.add(key);
      for (const key of keys) {
        const entry = await kv.get(key);
        if (entry === null || entry.operation !== "PUT") continue;
        const record = decodeNodeRecord(names.nodes, key, entry.string());
        if (record.expiresAtMs > now()) found.push(record);
      }
    } catch (err) {
      throw storageError(`cannot read the KV bucket ${names.nodes}`, err);
    }
    return { membership: true, nodes: found.sort((a, b) => a.node.localeCompare(b.node)) };
  }

  async function leases(streams: ReadonlyMap<string, unknown>): Promise<Map<number, LeaseHolder>> {
    const kv = await bucket(names.leases, streams);
    const held = new Map<number, LeaseHolder>();
    if (kv === undefined) return held;
    await Promise.all(
      Array.from({ length: options.shards }, async (_, shard) => {
        let entry: Awaited<ReturnType<KV["get"]>>;
        try {
          entry = await kv.get(String(shard));
        } catch (err) {
          throw storageError(`cannot read the lease of shard ${shard} in bucket ${names.leases}`, err);
        }
        if (entry === null || entry.operation !== "PUT") return;
        const { owner, epoch, expiresAtMs } = decodeLease(names.leases, shard, entry.revision, entry.value);
        held.set(shard, { shard, owner, epoch, expiresAtMs });
      }),
    );
    return held;
  }

  /** Every stream's last sequence, by stream name. */
  async function lastSequences(jsm: JetStreamManager): Promise<Map<string, bigint>> {
    const last = new Map<string, bigint>();
    try {
      for await (const info of jsm.streams.list()) last.set(info.config.name, BigInt(info.state.last_seq));
    } catch (err) {
      throw storageError("cannot list the JetStream streams", err);
    }
    return last;
  }

  /**
   * Inputs waiting per shard: what the consumer filtered on the shard's
   * subject has yet to deliver or have acknowledged, when there is one; else
   * the messages the stream holds on that subject (an inputs stream that
   * removes what its shard consumed).
   */
  async function pendingInputs(jsm: JetStreamManager, streams: ReadonlyMap<string, unknown>): Promise<Map<number, bigint> | undefined> {
    if (!streams.has(names.inputs)) return undefined;
    let held: Record<string, number>;
    try {
      held = (await jsm.streams.info(names.inputs, { subjects_filter: `${prefix}.in.>` })).state.subjects ?? {};
    } catch (err) {
      throw storageError(`cannot read stream ${names.inputs}`, err);
    }
    const pending = new Map<number, bigint>();
    for (let shard = 0; shard < options.shards; shard++) pending.set(shard, BigInt(held[names.input(shard)] ?? 0));
    try {
      for await (const consumer of jsm.consumers.list(names.inputs)) {
        const match = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\.in\\.(\\d+)$`).exec(
          consumer.config.filter_subject ?? "",
        );
        if (match === null) continue;
        pending.set(Number(match[1]), BigInt(consumer.num_pending + consumer.num_ack_pending));
      }
    } catch (err) {
      throw storageError(`cannot list the consumers of stream ${names.inputs}`, err);
    }
    return pending;
  }

  return {
    async read() {
      let jsm: JetStreamManager;
      try {
        jsm = await jetstreamManager(options.connection, { timeout });
      } catch (err) {
        throw storageError("JetStream is not available", err);
      }
      const streams = await lastSequences(jsm);
      const [members, held, inputs] = await Promise.all([nodes(streams), leases(streams), pendingInputs(jsm, streams)]);
      const shards = Array.from(
        { length: options.shards },
        (_, shard): ShardRecord => ({
          shard,
          lease: held.get(shard),
          walLastSequence: streams.get(names.wal(shard)) ?? 0n,
          pendingInputs: inputs?.get(shard),
        }),
      );
      return { nodes: members.nodes, shards, membership: members.membership };
    },
  };
}

/** Decodes a membership record, naming the bucket and key of one that is not a Shoal node's. */
export function decodeNodeRecord(bucket: string, key: string, text: string): NodeRecord {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    value = undefined;
  }
  const v = value as Partial<Record<keyof NodeRecord, unknown>> | undefined;
  const shards = Array.isArray(v?.shards) ? (v.shards as unknown[]) : undefined;
  const epochOf = (s: unknown): bigint | undefined => {
    const epoch = (s as { epoch?: unknown } | null)?.epoch;
    if (typeof epoch === "number" && Number.isSafeInteger(epoch) && epoch >= 0) return BigInt(epoch);
    if (typeof epoch === "string" && /^\d+$/.test(epoch)) return BigInt(epoch);
    return undefined;
  };
  if (
    typeof v !== "object" ||
    v === null ||
    typeof v.node !== "string" ||
    typeof v.ingress !== "string" ||
    typeof v.heartbeatAtMs !== "number" ||
    typeof v.expiresAtMs !== "number" ||
    shards === undefined ||
    !shards.every((s) => Number.isInteger((s as { shard?: unknown } | null)?.shard) && epochOf(s) !== undefined)
  ) {
    throw storageError(
      `the record of node ${key} in bucket ${bucket} is not a Shoal node's (only Shoal nodes may write this bucket: delete the key with \`nats kv del ${bucket} ${key}\` after checking what wrote it)`,
      new Error(`expected {"node","ingress","heartbeatAtMs","expiresAtMs","shards":[{"shard","epoch"}]}, got ${text.slice(0, 200)}`),
    );
  }
  return {
    node: v.node,
    ingress: v.ingress,
    heartbeatAtMs: v.heartbeatAtMs,
    expiresAtMs: v.expiresAtMs,
    shards: shards.map((s) => ({ shard: (s as { shard: number }).shard, epoch: epochOf(s) as bigint })),
  };
}
