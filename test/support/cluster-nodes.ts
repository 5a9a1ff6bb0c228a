// Real `shoal-node` processes of the bank on a NATS cluster, for cluster tests
// (issue 10): each node has its own shoal.yaml (storage nats, cluster.nodeId),
// data directory and ingress port, and is killed, stopped, resumed and
// restarted by its pid, never by name (other test runs start nodes too).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { NatsCluster } from "./nats-cluster.js";
import { type Child, freePort, repoRoot, start } from "./processes.js";

const shoalNode = join(repoRoot, "packages/runtime/bin/shoal-node.js");
const bankModule = join(repoRoot, "examples/bank/dist/module.js");
const listening = /^shoal-node: listening at (http:\/\/\S+)\n/m;

/** Nodes to start on a running NATS cluster. */
export interface ClusterNodesOptions {
  readonly nats: NatsCluster;
  /** How many nodes; default 3. */
  readonly count?: number;
  /** `shards` of every node; default 8. */
  readonly shards?: number;
  /** `cluster.leaseMs`; default 2000, so that a dead node's shards move within a test's patience. */
  readonly leaseMs?: number;
  /** `log.level`; default warn. */
  readonly logLevel?: string;
  /** The functions module; default the bank's (examples/bank/dist/module.js). */
  readonly module?: string;
}

/** One `shoal-node` process, with the same id, port and directory across restarts. */
export interface ClusterNode {
  /** Its `cluster.nodeId`, `node-1`… */
  readonly id: string;
  /** Its ingress, `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** The current process (undefined before the first start). */
  readonly child: Child | undefined;
  /** Whether a process is running (it may be stopped with SIGSTOP). */
  readonly running: boolean;
  /** Whether it is stopped with SIGSTOP. */
  readonly paused: boolean;
  /** Every exit of a process of this node that the test did not cause (signal or code), with its stderr's end. */
  readonly unexpectedExits: readonly string[];
  /** The stderr of every process of this node so far. */
  log(): string;
  /** Starts the node (again) and waits until its ingress listens. */
  start(): Promise<void>;
  /** SIGKILLs the process and waits until it exited. */
  kill(): Promise<void>;
  /** SIGTERMs the process and resolves with its exit code or signal. */
  term(): Promise<number | string>;
  /** SIGSTOPs the process. */
  pause(): void;
  /** SIGCONTs a process stopped with `pause`. */
  resume(): void;
}

/** N nodes on one NATS cluster. */
export interface ClusterNodes {
  readonly nodes: readonly ClusterNode[];
  /** Every node's ingress. */
  readonly urls: string[];
  /** SIGKILLs every node and removes their directories. */
  close(): Promise<void>;
}

/** Starts `count` bank nodes on `nats` and waits until each one listens. */
export async function startClusterNodes(options: ClusterNodesOptions): Promise<ClusterNodes> {
  const root = mkdtempSync(join(tmpdir(), "shoal-cluster-nodes-"));
  const count = options.count ?? 3;
  const nodes = await Promise.all(
    Array.from({ length: count }, async (_, i) => clusterNode(root, `node-${i + 1}`, await freePort(), options)),
  );
  const cluster: ClusterNodes = {
    nodes,
    urls: nodes.map((n) => n.url),
    async close() {
      await Promise.all(nodes.map((n) => n.kill()));
      rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    await Promise.all(nodes.map((n) => n.start()));
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return cluster;
}

/** What a cluster node's shoal.yaml says: one place for every test that starts `shoal-node` on the nats backend. */
export interface ClusterNodeConfig {
  readonly nodeId: string;
  readonly servers: readonly string[];
  /** The node's local store, relative to its working directory or absolute. */
  readonly directory: string;
  readonly port: number;
  readonly shards: number;
  readonly leaseMs: number;
  /** Replicas of the streams the node creates; unset: the node's default. */
  readonly replicas?: 1 | 3;
  readonly module?: string;
  readonly logLevel?: string;
  /** More top-level lines, e.g. a `retry:` section. */
  readonly extra?: readonly string[];
}

/** The shoal.yaml text of a cluster node. */
export function clusterNodeYaml(c: ClusterNodeConfig): string {
  const replicas = c.replicas === undefined ? "" : `, replicas: ${c.replicas}`;
  return [
    `shards: ${c.shards}`,
    `storage: { backend: nats, servers: ${JSON.stringify(c.servers)}, directory: ${JSON.stringify(c.directory)}${replicas} }`,
    `cluster: { nodeId: ${c.nodeId}, leaseMs: ${c.leaseMs} }`,
    `ingress: { host: 127.0.0.1, port: ${c.port} }`,
    `functions: { module: ${JSON.stringify(c.module ?? bankModule)} }`,
    ...(c.extra ?? []),
    `log: { level: ${c.logLevel ?? "warn"} }`,
    "",
  ].join("\n");
}

/**
 * Writes `<dir>/<nodeId>.yaml` for a node whose store is `<nodeId>-store`
 * (relative: the node runs in `dir`), and returns the file's path.
 */
export function writeClusterNodeConfig(dir: string, c: Omit<ClusterNodeConfig, "directory">): string {
  const path = join(dir, `${c.nodeId}.yaml`);
  writeFileSync(path, clusterNodeYaml({ ...c, directory: `${c.nodeId}-store` }));
  return path;
}

function clusterNode(root: string, id: string, port: number, o: ClusterNodesOptions): ClusterNode {
  const dir = join(root, id);
  mkdirSync(dir);
  const config = join(dir, "shoal.yaml");
  writeFileSync(
    config,
    clusterNodeYaml({
      nodeId: id,
      servers: o.nats.urls,
      directory: join(dir, "store"),
      port,
      shards: o.shards ?? 8,
      leaseMs: o.leaseMs ?? 2000,
      replicas: o.nats.servers.length === 1 ? 1 : 3,
      module: o.module ?? bankModule,
      logLevel: o.logLevel ?? "warn",
    }),
  );
  let child: Child | undefined;
  let paused = false;
  const logs: string[] = [];
  const unexpectedExits: string[] = [];
  // The processes the test ends itself; any other exit is the node's own doing.
  const ended = new WeakSet<Child>();
  const end = async (signal: "SIGKILL" | "SIGTERM") => {
    const running = child;
    if (running === undefined) return undefined;
    child = undefined;
    ended.add(running);
    running.process.kill(signal);
    // A stopped process takes SIGKILL, but SIGTERM only once it runs again.
    if (paused) running.process.kill("SIGCONT");
    paused = false;
    return await running.exited;
  };
  return {
    id,
    url: `http://127.0.0.1:${port}`,
    get child() {
      return child;
    },
    get running() {
      return child !== undefined;
    },
    get paused() {
      return paused;
    },
    unexpectedExits,
    log: () => [...logs, child?.stderr() ?? ""].join(""),
    async start() {
      if (child !== undefined) throw new Error(`${id} is running already: kill it first`);
      const started = start(process.execPath, [shoalNode, "--config", config], { cwd: dir });
      child = started;
      started.exited.then((how) => {
        logs.push(started.stderr());
        if (!ended.has(started)) {
          unexpectedExits.push(`${id} exited by itself (${how}); stderr:\n${started.stderr().trimEnd().split("\n").slice(-15).join("\n")}`);
          if (child === started) child = undefined;
        }
      });
      await started.waitFor(listening, 120_000);
    },
    async kill() {
      await end("SIGKILL");
    },
    async term() {
      return (await end("SIGTERM")) ?? "not running";
    },
    pause() {
      if (child === undefined || paused) throw new Error(`${id} is not running, or paused already`);
      child.process.kill("SIGSTOP");
      paused = true;
    },
    resume() {
      if (child === undefined || !paused) throw new Error(`${id} is not paused`);
      child.process.kill("SIGCONT");
      paused = false;
    },
  };
}
