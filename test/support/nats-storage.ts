// Helpers for tests of the `nats` shard storage: a prefix of streams and
// buckets per test, and their removal afterwards.
import { randomBytes } from "node:crypto";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";

/** A stream and bucket prefix no other test uses. */
export function uniquePrefix(): string {
  return `t${randomBytes(4).toString("hex")}`;
}

/** Deletes every stream a storage with `prefix` created: its WALs, snapshot pointers and snapshot objects. */
export async function removeNatsPrefix(nc: NatsConnection, prefix: string): Promise<void> {
  const jsm = await jetstreamManager(nc, { timeout: 15_000 });
  const names: string[] = [];
  for await (const name of jsm.streams.names()) {
    if (name.startsWith(`${prefix}-wal-`) || name === `KV_${prefix}-snapshot-pointers` || name === `OBJ_${prefix}-snapshots`)
      names.push(name);
  }
  for (const name of names) await jsm.streams.delete(name);
}

/**
 * Waits until the cluster places an R3 stream: right after the servers
 * start, JetStream may have a meta leader but not yet know every peer
 * ("no suitable peers for placement").
 */
export async function waitForPlacement(nc: NatsConnection, replicas = 3): Promise<void> {
  const jsm = await jetstreamManager(nc, { timeout: 5_000 });
  const name = `placement-${uniquePrefix()}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      await jsm.streams.add({ name, subjects: [name], num_replicas: replicas });
      await jsm.streams.delete(name);
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`the cluster places no R${replicas} stream`, { cause: err });
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}
