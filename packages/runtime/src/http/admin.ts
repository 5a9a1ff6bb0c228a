import { fromBinary, type MessageInitShape, toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, createClient, type ServiceImpl } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Admin, type ClusterStatusSchema, type StatusResponseSchema } from "@shoal/sdk/internal";
import type { ClusterStatusReader } from "../cluster/cluster-status.js";
import { defaults } from "../config/defaults.js";
import type { NodeRuntime } from "../node/runtime.js";
import { StorageError } from "../storage/storage.js";
import { mapErrors } from "./errors.js";

/**
 * Serves `shoal.v1.Admin`: status, instance state, instance keys and dead
 * letters, for `shoal status`, `shoal state` and `shoal dead-letters`. With
 * `clusterStatusReader` (a node on the nats backend), the status also lists
 * every live node of the cluster, its shards, their leases and lag.
 */
export function registerAdmin(router: ConnectRouter, runtime: NodeRuntime, clusterStatusReader?: ClusterStatusReader): void {
  function functionNamed(name: string, stateful = true) {
    const registered = runtime.functions.get(name);
    if (registered === undefined) {
      const known = [...runtime.functions.keys()].sort().join(", ");
      throw new ConnectError(`no function type "${name}" runs here (known: ${known})`, Code.NotFound);
    }
    if (stateful && registered.fn.state === undefined)
      throw new ConnectError(`${name} is stateless: it has no instances`, Code.FailedPrecondition);
    return registered.fn;
  }
  const admin: ServiceImpl<typeof Admin> = {
    async status(req) {
      const storage = runtime.storageStats();
      const connection = runtime.storageConnection();
      const applied = new Map((runtime.appendStats() ?? []).map((s) => [s.shard, s.applied]));
      const local: MessageInitShape<typeof StatusResponseSchema> = {
        node: runtime.nodeId,
        shards: runtime.shards,
        functions: [...runtime.functions.keys()].sort(),
        shardStatus: runtime.status().map((s) => ({
          shard: s.shard,
          epoch: s.epoch,
          sequence: s.sequence,
          instances: s.instances,
          pending: s.pending,
          outbox: s.outbox,
          memos: s.memos,
          walApplied: applied.get(s.shard),
        })),
        storageGroups: BigInt(storage?.groups ?? 0),
        storageRecords: BigInt(storage?.records ?? 0),
        storageBytes: BigInt(storage?.bytes ?? 0),
        nats:
          connection === undefined ? undefined : { state: connection.state, server: connection.server, reconnects: connection.reconnects },
      };
      if (req.local || clusterStatusReader === undefined) return local;
      try {
        return { ...local, cluster: await clusterStatus(runtime, clusterStatusReader, local) };
      } catch (err) {
        // The node's own status is what matters most when NATS is out of reach: it is answered, with why the rest is missing.
        if (!(err instanceof StorageError)) throw err;
        return { ...local, cluster: { error: err.message } };
      }
    },
    getState(req) {
      const fn = functionNamed(req.function);
      if (req.key === "") throw new ConnectError("key is empty", Code.InvalidArgument);
      const bytes = runtime.stateBytesOf(fn.typeName, req.key);
      if (bytes === undefined || fn.state === undefined) return { found: false };
      return { found: true, stateJson: toJsonString(fn.state, fromBinary(fn.state, bytes)) };
    },
    listInstances(req) {
      const fn = functionNamed(req.function);
      const limit = req.limit === 0 ? defaults.adminListLimit : Math.min(req.limit, 10_000);
      return runtime.listInstances(fn.typeName, { after: req.after === "" ? undefined : req.after, limit });
    },
    async backup(req) {
      if (req.directory === "")
        throw new ConnectError("directory is empty: name a new or empty directory on the node's machine", Code.InvalidArgument);
      let copied: { directory: string; bytes: number } | undefined;
      try {
        copied = await runtime.backup(req.directory);
      } catch (err) {
        // The directory or the disk is at fault, not a transient state of the node.
        if (err instanceof StorageError) throw new ConnectError(err.message, Code.FailedPrecondition, undefined, undefined, err);
        throw err;
      }
      if (copied === undefined) {
        throw new ConnectError(
          "this node's storage backend cannot be copied while it runs (only the local backend can): stop the node and copy its data instead",
          Code.FailedPrecondition,
        );
      }
      return { directory: copied.directory, bytes: BigInt(copied.bytes) };
    },
    listDeadLetters(req) {
      if (req.function !== "") functionNamed(req.function, false);
      const limit = req.limit === 0 ? defaults.adminListLimit : Math.min(req.limit, 10_000);
      const letters = runtime
        .deadLetters()
        .filter(({ letter }) => req.function === "" || letter.target?.type === req.function)
        .sort((a, b) => Number(a.letter.deadAtMs - b.letter.deadAtMs));
      return {
        deadLetters: letters.slice(-limit).map(({ shard, letter }) => ({
          shard,
          messageId: letter.envelopeId,
          function: letter.target?.type ?? "",
          key: letter.target?.key ?? "",
          handler: letter.handler,
          code: letter.error !== undefined ? codeName(letter.error.code) : "",
          error: letter.error?.message ?? "",
          deadAtMs: letter.deadAtMs,
          requestJson: requestJson(letter.target?.type ?? "", letter.handler, letter.payload),
        })),
        more: letters.length > limit,
      };
    },
  };
  router.service(Admin, admin, { interceptors: [mapErrors] });

  /** The request as canonical JSON, or "" when its handler is unknown here or the bytes do not decode. */
  function requestJson(type: string, handler: string, payload: Uint8Array): string {
    const input = runtime.functions.get(type)?.fn.handlers.get(handler)?.method.input;
    if (input === undefined) return "";
    try {
      return toJsonString(input, fromBinary(input, payload));
    } catch {
      return "";
    }
  }
}

/** "invalid_argument" for Code.InvalidArgument, as Connect's JSON names codes. */
function codeName(code: number): string {
  const name = Code[code];
  return name === undefined ? String(code) : name.replace(/[A-Z]/g, (c, i: number) => (i === 0 ? c.toLowerCase() : `_${c.toLowerCase()}`));
}

/** How long the status waits for another node's own counters before it lists that node as unreachable. */
const nodeStatusTimeoutMs = 3_000;

/**
 * The cluster's status: the live nodes from NATS, each with the shards it
 * lists, their leases and WAL sequences, and the sequence each owner applied,
 * asked of the owner itself (`Status` with `local`) at its ingress.
 */
async function clusterStatus(
  runtime: NodeRuntime,
  reader: ClusterStatusReader,
  local: MessageInitShape<typeof StatusResponseSchema>,
): Promise<MessageInitShape<typeof ClusterStatusSchema>> {
  const records = await reader.read();
  const own = local.shardStatus ?? [];
  const nodes = [...records.nodes];
  // A node is live while it answers, listed in the membership bucket or not (yet).
  if (!nodes.some((n) => n.node === runtime.nodeId)) {
    nodes.push({
      node: runtime.nodeId,
      ingress: "",
      heartbeatAtMs: 0,
      expiresAtMs: 0,
      shards: own.map((s) => ({ shard: s.shard ?? 0, epoch: BigInt(s.epoch ?? 0) })),
    });
    nodes.sort((a, b) => a.node.localeCompare(b.node));
  }
  const listed = new Set<number>();
  const answers = await Promise.all(
    nodes.map(async (node) => {
      if (node.node === runtime.nodeId) return { applied: new Map(own.map((s) => [s.shard ?? 0, s.walApplied])), unreachable: "" };
      try {
        const client = createClient(Admin, createConnectTransport({ baseUrl: node.ingress, httpVersion: "1.1", useBinaryFormat: true }));
        const answer = await client.status({ local: true }, { timeoutMs: nodeStatusTimeoutMs });
        return { applied: new Map(answer.shardStatus.map((s) => [s.shard, s.walApplied])), unreachable: "" };
      } catch (err) {
        return {
          applied: new Map<number, bigint | undefined>(),
          unreachable: `${node.ingress}: ${err instanceof Error ? err.message : String(err)}`,
        };
      }
    }),
  );
  return {
    membership: records.membership,
    nodes: nodes.map((node, i) => {
      const answer = answers[i] as (typeof answers)[number];
      return {
        node: node.node,
        ingress: node.ingress,
        heartbeatAtMs: BigInt(node.heartbeatAtMs),
        expiresAtMs: BigInt(node.expiresAtMs),
        unreachable: answer.unreachable,
        shards: node.shards.map(({ shard, epoch }) => {
          listed.add(shard);
          const record = records.shards[shard];
          const wal = record?.walLastSequence ?? 0n;
          const applied = answer.applied.get(shard);
          return {
            shard,
            epoch,
            leaseOwner: record?.lease?.owner ?? "",
            leaseEpoch: record?.lease?.epoch ?? 0n,
            leaseExpiresAtMs: BigInt(record?.lease?.expiresAtMs ?? 0),
            walSequence: wal,
            appliedSequence: applied,
            lag: applied === undefined ? undefined : wal > applied ? wal - applied : 0n,
            pendingInputs: record?.pendingInputs,
          };
        }),
      };
    }),
    unownedShards: records.shards.map((s) => s.shard).filter((shard) => !listed.has(shard)),
  };
}
