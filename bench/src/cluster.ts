// The cluster kinds (`cluster-<N>n-r<R>`): N `shoal-node` processes, the
// counter module on `storage: { backend: nats }`, on R nats-server processes
// (R = 3: a JetStream cluster with routes on loopback, streams with 3
// replicas). Everything runs as separate processes on this machine; the
// benchmark reads their CPU time and RSS from /proc, so a request's cost
// includes the nats-servers' share, which is where replication costs.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { freePort } from "./ports.js";
import type { ClusterKind, ProcessUsage, ServerReport } from "./protocol.js";
import type { ServerProcess } from "./server-process.js";

const shoalNode = fileURLToPath(new URL("../../packages/runtime/bin/shoal-node.js", import.meta.url));
const counterModule = fileURLToPath(new URL("./module.js", import.meta.url));
/** Debian's nats-server (`apt-get install nats-server`); SHOAL_NATS_SERVER overrides it. */
const natsServer = process.env.SHOAL_NATS_SERVER ?? "/usr/sbin/nats-server";
const shards = 64;
/** /proc/<pid>/stat counts CPU time in clock ticks: USER_HZ, 100 on Linux. */
const clockTicksPerSecond = 100;

/** The nats-server's path and version, for the report. */
export function natsServerVersion(): string {
  try {
    return `${natsServer} ${execFileSync(natsServer, ["--version"], { encoding: "utf8" }).trim()}`;
  } catch (err) {
    return `${natsServer}: ${(err as Error).message}`;
  }
}

/** A cluster kind's sizes: `cluster-3n-r1` is 3 nodes on 1 nats-server. */
export function clusterShape(kind: ClusterKind): { nodes: number; replicas: number } {
  const match = /^cluster-(\d+)n-r(\d+)$/.exec(kind);
  return { nodes: Number(match?.[1]), replicas: Number(match?.[2]) };
}

/** A running cluster: the ServerProcess of the benchmark, plus its ingresses and a crash of every node. */
export interface ClusterProcess extends ServerProcess {
  /** Every node's ingress, in node order. */
  readonly urls: readonly string[];
  /** SIGKILLs every runtime node, then starts them again on empty local directories: the state can only come from JetStream. */
  crashAndRestartNodes(): Promise<void>;
}

/** Starts the nats-servers, waits until each is ready, then the nodes, until each prints its URL. */
export async function startCluster(kind: ClusterKind, baseDir: string): Promise<ClusterProcess> {
  const { nodes, replicas } = clusterShape(kind);
  const dir = mkdtempSync(join(baseDir, `shoal-bench-${kind}-`));
  const children = new Set<ChildProcess>();
  const ownedBy = (group: ChildProcess[]) => group.filter((c) => children.has(c));
  let natsProcesses: ChildProcess[] = [];
  let nodeProcesses: ChildProcess[] = [];
  try {
    const natsPorts = await Promise.all(
      Array.from({ length: replicas }, async () => ({ client: await freePort(), route: await freePort() })),
    );
    const servers = natsPorts.map((p) => `nats://127.0.0.1:${p.client}`);
    const routes = natsPorts.map((p) => `nats://127.0.0.1:${p.route}`).join(",");
    natsProcesses = await Promise.all(
      natsPorts.map((ports, i) => {
        const name = `n${i + 1}`;
        const args = ["-a", "127.0.0.1", "-p", String(ports.client), "-n", name, "-js", "-sd", join(dir, name)];
        if (replicas > 1) args.push("--cluster_name", "shoal-bench", "--cluster", `nats://127.0.0.1:${ports.route}`, "--routes", routes);
        return startProcess(children, `${kind} ${name}`, natsServer, args, "stderr", /Server is ready/);
      }),
    );
    const nodePorts = await Promise.all(Array.from({ length: nodes }, () => freePort()));
    let generation = 0;
    const startNodes = () => {
      generation++;
      return Promise.all(
        nodePorts.map((port, i) => {
          const nodeId = `node-${i + 1}`;
          const config = join(dir, `${nodeId}.yaml`);
          const store = join(dir, `${nodeId}-store-${generation}`);
          mkdirSync(store);
          writeFileSync(
            config,
            [
              `shards: ${shards}`,
              `ingress: { host: 127.0.0.1, port: ${port} }`,
              `storage: { backend: nats, servers: ${JSON.stringify(servers)}, directory: ${JSON.stringify(store)}, replicas: ${replicas} }`,
              // The nodes share this machine's host name, the default node id: each needs its own. One node keeps the default.
              ...(nodes > 1 ? [`cluster: { nodeId: ${nodeId} }`] : []),
              `functions: { module: ${JSON.stringify(counterModule)} }`,
              "log: { level: warn }",
              "",
            ].join("\n"),
          );
          return startProcess(
            children,
            `${kind} ${nodeId}`,
            process.execPath,
            [shoalNode, "--config", config],
            "stdout",
            /listening at (\S+)/,
          );
        }),
      );
    };
    const urls = nodePorts.map((port) => `http://127.0.0.1:${port}`);
    nodeProcesses = await startNodes();
    await balanced(kind, urls);
    const usage = (group: ChildProcess[]) => {
      const sum = { user: 0, system: 0, rss: 0 };
      for (const child of ownedBy(group)) {
        const u = procUsage(child.pid as number);
        sum.user += u.user;
        sum.system += u.system;
        sum.rss += u.rss;
      }
      return sum;
    };
    const report = async (): Promise<ServerReport> => {
      const n = usage(nodeProcesses);
      const s = usage(natsProcesses);
      const group = (u: typeof n): ProcessUsage => ({ cpuUs: u.user + u.system, rss: u.rss });
      return {
        rss: n.rss + s.rss,
        cpu: { user: n.user + s.user, system: n.system + s.system },
        elu: undefined,
        storage: undefined,
        groups: { nodes: group(n), nats: group(s) },
      };
    };
    const stop = async (group: ChildProcess[], signal: NodeJS.Signals) => {
      await Promise.all(
        ownedBy(group).map(
          (child) =>
            new Promise<void>((resolve) => {
              child.once("exit", () => resolve());
              child.kill(signal);
            }),
        ),
      );
    };
    return {
      kind,
      pid: nodeProcesses[0]?.pid ?? -1,
      url: urls[0] as string,
      urls,
      report,
      state: () => Promise.reject(new Error(`${kind}: read a cluster's state over the wire (readOverWire)`)),
      rss: async () => (await report()).rss,
      async close() {
        await stop(nodeProcesses, "SIGTERM");
        await stop(natsProcesses, "SIGKILL");
        rmSync(dir, { recursive: true, force: true });
      },
      async kill() {
        await stop([...nodeProcesses, ...natsProcesses], "SIGKILL");
        rmSync(dir, { recursive: true, force: true });
      },
      async crashAndRestartNodes() {
        await stop(nodeProcesses, "SIGKILL");
        nodeProcesses = await startNodes();
        await balanced(kind, urls);
      },
    };
  } catch (err) {
    for (const child of children) child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Waits until the nodes have split the shards evenly (`shoal status`: each
 * node's open shards), so that the load does not meet shards moving while
 * nodes join: every shard open on one node, each node with its share.
 */
async function balanced(kind: ClusterKind, urls: readonly string[]): Promise<void> {
  const share = Math.floor(shards / urls.length);
  const deadline = Date.now() + 120_000;
  let counts: number[] = [];
  for (;;) {
    counts = await Promise.all(urls.map((url) => openShards(url).catch(() => -1)));
    if (counts.every((n) => n >= share && n <= share + 1) && counts.reduce((a, b) => a + b, 0) === shards) return;
    if (Date.now() > deadline)
      throw new Error(
        `${kind}: the nodes did not split the ${shards} shards evenly within 120 s (open shards per node: ${counts.join(", ")})`,
      );
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** How many shards a node has open, from its `shoal.v1.Admin/Status` (what `shoal status` shows). */
async function openShards(url: string): Promise<number> {
  const res = await fetch(`${url}/shoal.v1.Admin/Status`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{}",
    // A node that does not answer counts as none open, and the wait for balance goes on to its deadline.
    signal: AbortSignal.timeout(10_000),
  });
  if (!res.ok) throw new Error(`${url}: Status answered HTTP ${res.status}`);
  const status = (await res.json()) as { shardStatus?: unknown[] };
  return status.shardStatus?.length ?? 0;
}

/** Processes started here, killed when the benchmark exits however it exits (they are not its forks, so no IPC channel ends them). */
const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** Spawns a process and resolves once a line of its `stream` matches `ready`; its output after that goes to stderr, prefixed. */
function startProcess(
  children: Set<ChildProcess>,
  label: string,
  command: string,
  args: string[],
  stream: "stdout" | "stderr",
  ready: RegExp,
): Promise<ChildProcess> {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  running.add(child);
  child.once("exit", () => {
    children.delete(child);
    running.delete(child);
  });
  const tail: string[] = [];
  return new Promise((resolve, reject) => {
    let started = false;
    const timer = setTimeout(() => reject(new Error(`${label} (${command}) was not ready within 120 s:\n${tail.join("\n")}`)), 120_000);
    child.once("error", (err) => reject(new Error(`cannot start ${label}: ${command}`, { cause: err })));
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      if (!started) reject(new Error(`${label} exited (${code ?? signal}) before it was ready:\n${tail.join("\n")}`));
    });
    for (const name of ["stdout", "stderr"] as const) {
      createInterface({ input: child[name] as NodeJS.ReadableStream }).on("line", (line) => {
        if (!started && name === stream && ready.test(line)) {
          started = true;
          clearTimeout(timer);
          resolve(child);
        } else if (!started) {
          tail.push(line);
          if (tail.length > 40) tail.shift();
        } else if (name === "stderr" || !/^\s*$/.test(line)) {
          // nats-server logs its routine to stderr: only what follows readiness and is not INF.
          if (!/\[INF\]/.test(line)) console.error(`[${label}] ${line}`);
        }
      });
    }
  });
}

/** A process's CPU time (user and system, µs) and RSS (bytes), from /proc/<pid>/stat and /proc/<pid>/status; zeros once it is gone. */
function procUsage(pid: number): { user: number; system: number; rss: number } {
  let stat: string;
  let status: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    status = readFileSync(`/proc/${pid}/status`, "utf8");
  } catch {
    return { user: 0, system: 0, rss: 0 };
  }
  // The command name, in parentheses, may hold spaces: count the fields after it.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of proc(5); fields[0] here is field 3.
  const ticks = (field: string | undefined) => (Number(field) * 1e6) / clockTicksPerSecond;
  const rssKb = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0);
  return { user: ticks(fields[11]), system: ticks(fields[12]), rss: rssKb * 1024 };
}
