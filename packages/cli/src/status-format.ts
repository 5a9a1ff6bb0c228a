import { toJsonString } from "@bufbuild/protobuf";
import { type StatusResponse, StatusResponseSchema } from "@shoal/sdk/internal";

/** `shoal status --json`: the admin answer in protobuf's canonical JSON, for scripts. */
export function statusJson(status: StatusResponse): string {
  return toJsonString(StatusResponseSchema, status, { prettySpaces: 2 });
}

/**
 * `shoal status` for a person: the node's own shards and counters, its NATS
 * connection, and on the nats backend every live node of the cluster with
 * its shards, their lease epochs and lag. `nowMs` dates the heartbeats.
 */
export function statusText(status: StatusResponse, nowMs: number): string {
  const rows = status.shardStatus;
  const sum = (field: "instances" | "pending" | "outbox" | "memos") => rows.reduce((total, r) => total + r[field], 0);
  const table = (widths: readonly number[], cells: readonly unknown[]) => cells.map((v, i) => String(v).padStart(widths[i] ?? 0)).join(" ");
  const lines = [
    `node ${status.node}: ${rows.length} of ${status.shards} shards open; functions: ${status.functions.join(", ")}`,
    `instances ${sum("instances")}, pending ${sum("pending")}, undelivered outbox ${sum("outbox")}, memos ${sum("memos")}`,
    `storage: ${status.storageGroups} group commits covering ${status.storageRecords} records, ${status.storageBytes} bytes`,
  ];
  const nats = status.nats;
  if (nats !== undefined) {
    const where = nats.state === "connected" ? `connected to ${nats.server}` : `${nats.state} (last server ${nats.server})`;
    lines.push(`nats: ${where}, ${nats.reconnects} reconnects`);
  }
  lines.push(
    "shard  epoch  sequence  instances  pending  outbox",
    ...rows.map((r) => table([5, 6, 9, 10, 8, 7], [r.shard, r.epoch, r.sequence, r.instances, r.pending, r.outbox])),
  );
  const cluster = status.cluster;
  if (cluster === undefined) return `${lines.join("\n")}\n`;
  if (cluster.error !== "") return `${lines.join("\n")}\n\ncluster: cannot read it from NATS: ${cluster.error}\n`;
  const unowned = cluster.unownedShards.length === 0 ? "none" : cluster.unownedShards.join(", ");
  lines.push(
    "",
    `cluster: ${cluster.nodes.length} live node${cluster.nodes.length === 1 ? "" : "s"}${cluster.membership ? "" : " (no membership bucket yet: this node only)"}; shards no node owns: ${unowned}`,
  );
  for (const node of cluster.nodes) {
    const heartbeat = node.heartbeatAtMs > 0n ? `, heartbeat ${((nowMs - Number(node.heartbeatAtMs)) / 1_000).toFixed(1)} s ago` : "";
    const unreachable = node.unreachable === "" ? "" : `; did not answer (lag unknown): ${node.unreachable}`;
    lines.push(
      `node ${node.node}${node.ingress === "" ? "" : ` at ${node.ingress}`}: ${node.shards.length} shard${node.shards.length === 1 ? "" : "s"}${heartbeat}${unreachable}`,
    );
  }
  const owned = cluster.nodes.flatMap((node) => node.shards.map((shard) => ({ node: node.node, ...shard })));
  owned.sort((a, b) => a.shard - b.shard || a.node.localeCompare(b.node));
  const nodeWidth = Math.max(4, ...owned.map((s) => s.node.length));
  const optional = (v: bigint | undefined) => (v === undefined ? "-" : v);
  lines.push(
    `shard ${"node".padEnd(nodeWidth)}  epoch  lease (owner@epoch)  wal seq  applied  lag  inputs`,
    ...owned.map(
      (s) =>
        `${String(s.shard).padStart(5)} ${s.node.padEnd(nodeWidth)} ${table(
          [6, 19, 8, 8, 4, 7],
          [s.epoch, leaseText(s, nowMs), s.walSequence, optional(s.appliedSequence), optional(s.lag), optional(s.pendingInputs)],
        )}`,
    ),
  );
  return `${lines.join("\n")}\n`;
}

/** A shard's lease as status shows it: a released or expired lease is free, whoever held it last. */
function leaseText(s: { leaseOwner: string; leaseEpoch: bigint; leaseExpiresAtMs: bigint }, nowMs: number): string {
  if (s.leaseOwner === "") return "-";
  const held = `${s.leaseOwner}@${s.leaseEpoch}`;
  return Number(s.leaseExpiresAtMs) > nowMs ? held : `free (${held})`;
}
