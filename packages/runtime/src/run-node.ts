import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import type { NatsConnection } from "@nats-io/transport-node";
import { type Implementation, isModule, type ShoalModule } from "@shoal/sdk";
import { createClusterStatusReader } from "./cluster/cluster-status.js";
import { createLeaseDirectory, type LeaseDirectory } from "./cluster/lease-directory.js";
import { createNatsTransport } from "./cluster/nats-transport.js";
import { membershipBucket, type ShardCoordinator, startShardCoordinator } from "./cluster/shard-coordinator.js";
import { createShardLeases, leaseBucket, type ShardLeases } from "./cluster/shard-lease.js";
import { ConfigError, type ShoalConfig } from "./config/config.js";
import { listen, type RuntimeServer } from "./http/server.js";
import { createShardOwnership } from "./node/ownership.js";
import type { NodeTransport } from "./node/router.js";
import type { RuntimeOptions } from "./node/runtime.js";
import { createRuntime, type Runtime } from "./runtime.js";
import { createLocalShardStorage as createLocalStorage } from "./storage/local/lmdb-storage.js";
import { createMemoryStorage } from "./storage/memory/memory-storage.js";
import { connectToNats, createNatsShardStorage } from "./storage/nats/nats-shard-storage.js";
import { createShardInputs } from "./storage/nats/shard-inputs.js";
import type { ShardStorage } from "./storage/shard-store.js";
import { StorageError } from "./storage/storage.js";

/**
 * Imports a module file by its `file:` URL. The default is Node's own
 * `import()`; `@shoal/cli` passes one that loads TypeScript through tsx, so
 * the runtime itself needs no TypeScript tooling.
 */
export type ModuleImporter = (url: string) => Promise<{ default?: unknown }>;

/**
 * Loads a module file (`export default module(...)`). Without an importer,
 * the file must be JavaScript: build TypeScript first, or run it with
 * `shoal dev` / `shoal serve` from `@shoal/cli`, which load `.ts` as is.
 */
export async function loadModule(path: string, importModule?: ModuleImporter): Promise<ShoalModule> {
  if (importModule === undefined && /\.[mc]?tsx?$/.test(path)) {
    throw new Error(
      `${path}: a TypeScript module needs a build step here; build it to JavaScript and point at the .js file, or run it with \`shoal dev\` or \`shoal serve\` from @shoal/cli, which load .ts as is`,
    );
  }
  const loaded = await (importModule ?? ((url: string) => import(url)))(pathToFileURL(path).href);
  // tsx may wrap the ES module's default export once more.
  let candidate = loaded.default;
  if (!isModule(candidate) && typeof candidate === "object" && candidate !== null && "default" in candidate) {
    candidate = (candidate as { default: unknown }).default;
  }
  if (!isModule(candidate)) {
    throw new Error(
      `${path}: the default export is not a Shoal module; end the file with \`export default module(implement(XFunction, x), ...)\``,
    );
  }
  return candidate;
}

/** A node started from a config: its runtime and its listening ingress. */
export interface RunningNode {
  readonly runtime: Runtime;
  readonly server: RuntimeServer;
  close(): Promise<void>;
}

/** Options of `startNode` beyond the config. */
export interface StartNodeOptions {
  /**
   * Write messages to any egress name as JSON lines on stdout, configured or
   * not, as `shoal dev` does. Default `false`: only the names under `egress`
   * in the config (and `stdout`) exist, and an invocation that emits to
   * another name fails.
   */
  readonly anyEgressToStdout?: boolean;
}

/** The node's storage as `shoal.yaml` selects it; the runtime closes it on stop. */
async function openStorage(storage: ShoalConfig["storage"], cluster: Cluster | undefined): Promise<ShardStorage> {
  switch (storage.backend) {
    case "memory":
      return createMemoryStorage();
    case "local":
      return createLocalStorage({ directory: storage.directory, fsync: storage.fsync });
    case "nats":
      try {
        return await createNatsShardStorage({
          connection: cluster?.connection,
          servers: storage.servers,
          security: storage.security,
          directory: storage.directory,
          replicas: storage.replicas,
          prefix: storage.prefix,
        });
      } catch (err) {
        throw natsUnreachable(storage.servers, err);
      }
  }
}

function natsUnreachable(servers: readonly string[], err: unknown): StorageError {
  return new StorageError(
    `storage: cannot open the nats backend on ${servers.join(", ")} (is nats-server running there with JetStream, -js? check storage.servers): ${(err as Error).message}`,
  );
}

/** What a node on the `nats` backend runs besides its storage: one NATS connection, its leases, the directory of owners, the transport. */
interface Cluster {
  readonly connection: NatsConnection;
  /** `storage.prefix`: the first part of every stream, bucket and subject name. */
  readonly prefix: string;
  readonly leases: ShardLeases;
  readonly directory: LeaseDirectory;
  readonly transport: NodeTransport;
  close(): Promise<void>;
}

async function joinCluster(config: ShoalConfig): Promise<Cluster | undefined> {
  const { storage, cluster } = config;
  if (storage.backend !== "nats") return undefined;
  let connection: NatsConnection;
  try {
    connection = await connectToNats([...storage.servers], storage.security);
  } catch (err) {
    throw natsUnreachable(storage.servers, err);
  }
  try {
    const { prefix } = storage;
    const leases = await createShardLeases({
      connection,
      owner: cluster.nodeId,
      ttlMs: cluster.leaseMs,
      replicas: storage.replicas,
      bucket: leaseBucket(prefix),
    });
    const directory = await createLeaseDirectory({ connection, bucket: leaseBucket(prefix) });
    return {
      connection,
      prefix,
      leases,
      directory,
      transport: createNatsTransport({ connection, prefix }),
      async close() {
        directory.close();
        await connection.close().catch(() => {});
      },
    };
  } catch (err) {
    await connection.close().catch(() => {});
    throw natsUnreachable(storage.servers, err);
  }
}

/**
 * Starts a node as `shoal dev` and `shoal serve` do: `functions` run in this
 * process, the config's `functions.remote` in their endpoints.
 */
export async function startNode(
  config: ShoalConfig,
  functions: ShoalModule | readonly Implementation[],
  options: StartNodeOptions = {},
): Promise<RunningNode> {
  const { descriptors, remote: endpoints } = config.functions;
  let remote: RuntimeOptions["remote"];
  if (endpoints.length > 0 && descriptors !== undefined) {
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(descriptors);
    } catch (err) {
      throw new ConfigError(
        `functions.descriptors: cannot read the descriptor set ${descriptors} (make it with \`buf build -o functions.binpb\`): ${(err as Error).message}`,
      );
    }
    remote = { descriptors: bytes, descriptorsSource: descriptors, endpoints };
  }
  const cluster = await joinCluster(config);
  let storage: ShardStorage;
  try {
    storage = await openStorage(config.storage, cluster);
  } catch (err) {
    await cluster?.close();
    throw err;
  }
  let runtime: Runtime;
  try {
    runtime = createRuntime({
      functions,
      remote,
      storage,
      shards: config.shards,
      retry: config.retry,
      memoRetentionMs: config.memoRetentionMs,
      invokeTimeoutMs: config.invokeTimeoutMs,
      callResendMs: config.callResendMs,
      instanceCacheSize: config.instanceCacheSize,
      instanceIdleMs: config.instanceIdleMs,
      maxConcurrentInvocations: config.maxConcurrentInvocations,
      maxRequestBytes: config.ingress.maxRequestBytes,
      ignoreUnknownJsonFields: config.ingress.ignoreUnknownJsonFields,
      // Every egress type in shoal.yaml is stdout for now.
      egress: Object.fromEntries(Object.keys(config.egress).map((name) => [name, "stdout" as const])),
      defaultEgress: options.anyEgressToStdout ? "stdout" : undefined,
      logger: config.log.level,
      // In cluster mode the node starts with no shard and takes its share through leases.
      ...(cluster === undefined
        ? {}
        : {
            nodeId: config.cluster.nodeId,
            ownership: createShardOwnership([]),
            directory: cluster.directory,
            transport: cluster.transport,
            // One-way messages go through the inputs stream, so a send to a shard whose owner is down is accepted.
            inbox: createShardInputs({
              connection: cluster.connection,
              prefix: cluster.prefix,
              replicas: config.storage.backend === "nats" ? config.storage.replicas : undefined,
              logger: {
                warn: (message, fields) => runtime.logger.warn(message, fields),
                error: (message, fields) => runtime.logger.error(message, fields),
              },
            }),
          }),
    });
  } catch (err) {
    await storage.close().catch(() => {});
    await cluster?.close();
    throw err;
  }
  // A node that fails to start releases what it took (the local store's lock, the shards), so the caller may retry.
  for (const warning of config.warnings) runtime.logger.warn(`shoal.yaml: ${warning}`);
  let server: RuntimeServer | undefined;
  let coordinator: ShardCoordinator | undefined;
  try {
    await runtime.start();
    const { host, port, headersTimeoutMs, idleTimeoutMs, shutdownGraceMs } = config.ingress;
    const clusterStatus =
      cluster === undefined
        ? undefined
        : createClusterStatusReader({ connection: cluster.connection, shards: config.shards, prefix: cluster.prefix });
    server = await listen(runtime, { host, port, headersTimeoutMs, idleTimeoutMs, shutdownGraceMs, clusterStatus });
    if (cluster !== undefined) {
      coordinator = await startShardCoordinator({
        connection: cluster.connection,
        runtime,
        leases: cluster.leases,
        directory: cluster.directory,
        bucket: membershipBucket(cluster.prefix),
        ingress: server.url,
        leaseMs: config.cluster.leaseMs,
        replicas: config.storage.backend === "nats" ? config.storage.replicas : undefined,
        logger: runtime.logger,
      });
    }
  } catch (err) {
    await server?.close().catch(() => {});
    await runtime.close().catch(() => {});
    await cluster?.close();
    throw err;
  }
  const listening = server;
  return {
    runtime,
    server: listening,
    async close() {
      await listening.close();
      // Shards and leases released before the runtime closes: other nodes take them at once, not after expiry.
      await coordinator?.stop();
      await runtime.close();
      await cluster?.close();
    },
  };
}
