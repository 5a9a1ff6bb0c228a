// Real nats-server processes for cluster tests (DESIGN §9): a 3-node
// JetStream cluster on loopback, or a single server, each with its store under
// a temporary folder. Servers are stopped by their pid, never by name: other
// test runs on the machine start nats-server too.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { waitForPlacement } from "./nats-storage.js";
import { freePort } from "./processes.js";

/** Debian's nats-server (`apt-get install nats-server`); SHOAL_NATS_SERVER overrides it. */
export const natsServerBin = process.env.SHOAL_NATS_SERVER ?? "/usr/sbin/nats-server";

/** One nats-server of a test cluster. */
export interface NatsServerProcess {
  /** The server's name (`n1`…), as JetStream reports it for stream leaders. */
  readonly name: string;
  /** The client URL, `nats://127.0.0.1:<port>`. */
  readonly url: string;
  /** Whether the process is running (not killed, or restarted since). */
  readonly running: boolean;
  /** Kills the process with SIGKILL and waits until it exited. */
  kill(): Promise<void>;
  /** Starts the server again with the same name, ports and store. */
  restart(): Promise<void>;
}

/** A running set of nats-server processes: 3 clustered ones, or 1. */
export interface NatsCluster {
  readonly servers: readonly NatsServerProcess[];
  /** Every server's client URL, for a client that should fail over between them. */
  readonly urls: string[];
  /** The server with this name. */
  server(name: string): NatsServerProcess;
  /** A client connection to every server (it reconnects to another when one dies). */
  connect(): Promise<NatsConnection>;
  /** Resolves once JetStream answers through the running servers (a meta leader exists). */
  ready(timeoutMs?: number): Promise<void>;
  /** SIGKILLs every server and removes the store folder. */
  close(): Promise<void>;
}

/** Starts a 3-node JetStream cluster (`size` 3, the default) or a single server (`size` 1), and waits until it is ready. */
export async function startNatsCluster(options: { size?: 1 | 3 } = {}): Promise<NatsCluster> {
  const size = options.size ?? 3;
  const dir = mkdtempSync(join(tmpdir(), "shoal-nats-"));
  const nodes = await Promise.all(
    Array.from({ length: size }, async (_, i) => ({
      name: `n${i + 1}`,
      port: await freePort(),
      clusterPort: await freePort(),
    })),
  );
  const routes = nodes.map((n) => `nats://127.0.0.1:${n.clusterPort}`).join(",");
  const servers = nodes.map((node) => {
    const args = ["-a", "127.0.0.1", "-p", String(node.port), "-n", node.name, "-js", "-sd", join(dir, node.name)];
    if (size > 1) args.push("--cluster_name", "shoal-test", "--cluster", `nats://127.0.0.1:${node.clusterPort}`, "--routes", routes);
    return serverProcess(node.name, `nats://127.0.0.1:${node.port}`, args);
  });
  const urls = servers.map((s) => s.url);
  const cluster: NatsCluster = {
    servers,
    urls,
    server(name) {
      const found = servers.find((s) => s.name === name);
      if (found === undefined)
        throw new Error(`no nats-server named ${name} in this test cluster (${servers.map((s) => s.name).join(", ")})`);
      return found;
    },
    connect: () => connect({ servers: urls, reconnectTimeWait: 100, maxReconnectAttempts: -1 }),
    async ready(timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      const nc = await connectRunning(servers, deadline);
      try {
        for (;;) {
          try {
            const jsm = await jetstreamManager(nc, { timeout: 1_000 });
            await jsm.getAccountInfo();
            return;
          } catch (err) {
            if (Date.now() > deadline) throw new Error(`JetStream has no meta leader after ${timeoutMs} ms`, { cause: err });
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
        }
      } finally {
        await nc.close();
      }
    },
    async close() {
      await Promise.all(servers.map((s) => s.kill()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await Promise.all(servers.map((s) => s.restart()));
    await cluster.ready();
    // A meta leader may not yet know every peer: wait until an R3 stream can be placed, so a
    // test's first replicated stream does not spend its own time budget waiting for placement.
    if (size > 1) {
      const nc = await cluster.connect();
      try {
        await waitForPlacement(nc, size);
      } finally {
        await nc.close();
      }
    }
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return cluster;
}

async function connectRunning(servers: readonly NatsServerProcess[], deadline: number): Promise<NatsConnection> {
  for (;;) {
    try {
      return await connect({ servers: servers.filter((s) => s.running).map((s) => s.url), timeout: 1_000 });
    } catch (err) {
      if (Date.now() > deadline) throw new Error("no nats-server of the test cluster accepts connections", { cause: err });
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

function serverProcess(name: string, url: string, args: string[]): NatsServerProcess {
  let child: ChildProcess | undefined;
  let exited: Promise<unknown> = Promise.resolve();
  let log = "";
  return {
    name,
    url,
    get running() {
      return child !== undefined;
    },
    async kill() {
      const running = child;
      if (running === undefined) return;
      child = undefined;
      running.kill("SIGKILL");
      await exited;
    },
    async restart() {
      if (child !== undefined) throw new Error(`nats-server ${name} is running already: kill it first`);
      log = "";
      const started = spawn(natsServerBin, args, { stdio: ["ignore", "ignore", "pipe"] });
      child = started;
      // A binary that cannot be started emits "error" and never "exit".
      exited = new Promise((resolve) => {
        started.once("exit", resolve);
        started.once("error", resolve);
      });
      started.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
        log = (log + chunk).slice(-20_000);
      });
      // The server logs this line once it accepts clients.
      await new Promise<void>((resolve, reject) => {
        const check = () => {
          if (log.includes("Server is ready")) {
            started.stderr?.off("data", check);
            resolve();
          }
        };
        started.stderr?.on("data", check);
        started.once("error", (err) => reject(new Error(`cannot start ${natsServerBin} (apt-get install nats-server)`, { cause: err })));
        started.once("exit", (code, signal) => {
          if (child === started) child = undefined;
          reject(new Error(`nats-server ${name} exited (${code ?? signal}) before it was ready:\n${log}`));
        });
      });
    },
  };
}

/** The server leading a stream, once it has a leader other than `not` and its running peers are current. */
export async function streamLeader(
  cluster: NatsCluster,
  nc: NatsConnection,
  stream: string,
  not?: string,
  options: { followersCurrent?: boolean } = {},
): Promise<string> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    // Both fail while JetStream elects a leader: ask again.
    const info = await jetstreamManager(nc, { timeout: 1_000 })
      .then((jsm) => jsm.streams.info(stream))
      .catch(() => undefined);
    const leader = info?.cluster?.leader;
    const replicas = info?.cluster?.replicas ?? [];
    // Wait for the running followers to catch up, so a leader killed next leaves a current one to take over.
    const running = replicas.filter((r) => cluster.server(r.name).running).length;
    const current = replicas.filter((r) => r.current && !r.offline).length;
    if (leader !== undefined && leader !== not && (options.followersCurrent === false || current >= running)) return leader;
    if (Date.now() > deadline)
      throw new Error(
        `stream ${stream} has no current leader${not === undefined ? "" : ` other than ${not}`}: ${JSON.stringify(info?.cluster)}`,
      );
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
