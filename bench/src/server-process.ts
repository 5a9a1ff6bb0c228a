import { type ChildProcess, fork } from "node:child_process";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { Kind, ServerReply, ServerReport, ServerRequest } from "./protocol.js";

const serverScript = fileURLToPath(new URL("./server.js", import.meta.url));

/** A benchmark server running in a child process. */
export interface ServerProcess {
  readonly kind: Kind;
  readonly pid: number;
  readonly url: string;
  /** Every ingress the load goes through, round-robin: `[url]`, or a cluster's nodes. */
  readonly urls: readonly string[];
  report(): Promise<ServerReport>;
  state(): Promise<Map<string, bigint>>;
  /** Resident set size read from /proc (no work in the server), or from a report elsewhere. */
  rss(): Promise<number>;
  /** Asks the server to shut down and waits for it to exit. */
  close(): Promise<void>;
  /** SIGKILL: a crash, nothing flushed. */
  kill(): Promise<void>;
}

export interface StartOptions {
  /** The local storage directory (shoal-durable, shoal-remote). */
  readonly directory?: string;
  /** Node flags for the server, e.g. `--cpu-prof`. */
  readonly execArgv?: readonly string[];
}

/** Starts `node bench/dist/server.js <kind>` with an IPC channel and waits for its URL. */
export async function startServer(kind: Kind, options: StartOptions = {}): Promise<ServerProcess> {
  const args = options.directory !== undefined ? [kind, "--dir", options.directory] : [kind];
  const child: ChildProcess = fork(serverScript, args, {
    stdio: ["ignore", "pipe", "inherit", "ipc"],
    serialization: "advanced",
    execArgv: [...(options.execArgv ?? [])],
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const pending = new Map<number, { resolve: (r: ServerReply) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  child.on("message", (reply: ServerReply) => {
    const waiter = pending.get(reply.id);
    pending.delete(reply.id);
    if (reply.error !== undefined) waiter?.reject(new Error(`${kind} server: ${reply.error}`));
    else waiter?.resolve(reply);
  });
  void exited.then((code) => {
    for (const w of pending.values()) w.reject(new Error(`${kind} server exited (code ${code})`));
    pending.clear();
  });

  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${kind} server printed no URL within 60 s`)), 60_000);
    void exited.then((code) => reject(new Error(`${kind} server exited (code ${code}) before printing its URL`)));
    lines.once("line", (line) => {
      clearTimeout(timer);
      resolve(line.trim());
    });
  });
  lines.on("line", (line) => console.error(`[${kind} server] ${line}`));

  const request = (op: ServerRequest["op"]) =>
    new Promise<ServerReply>((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject });
      child.send({ id, op } satisfies ServerRequest, (err) => {
        if (err !== null) {
          pending.delete(id);
          reject(err);
        }
      });
    });
  const pid = child.pid ?? -1;
  const report = async () => (await request("report")).report as ServerReport;
  return {
    kind,
    pid,
    url,
    urls: [url],
    report,
    state: async () => (await request("state")).state ?? new Map(),
    async rss() {
      // shoal-remote's report adds up its endpoint process.
      if (kind === "shoal-remote") return (await report()).rss;
      try {
        const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
        if (match?.[1] !== undefined) return Number(match[1]) * 1024;
      } catch {
        // not Linux: ask the process
      }
      return (await report()).rss;
    },
    async close() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      await request("close").catch(() => undefined);
      const code = await exited;
      if (code !== 0) throw new Error(`${kind} server exited with code ${code}`);
    },
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGKILL");
      await exited;
    },
  };
}
