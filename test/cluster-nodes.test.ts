// Cluster mode with real processes (issue 10, items 2 and 3): 3 nats-servers
// (R3) and 3 `shoal-node` processes serving the bank example. Requests go in
// through every ingress for accounts on every node; nodes are SIGKILLed,
// SIGTERMed and SIGSTOPped past their lease while transfers run. Checks: every
// acknowledged transfer is applied exactly once on both accounts, money is
// conserved, and every request is answered or fails with a retryable error.
// Runs the built bin (npm run build first).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeClusterNodeConfig } from "./support/cluster-nodes.js";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";
import { type Child, freePort, repoRoot, start } from "./support/processes.js";

const shoalNode = join(repoRoot, "packages/runtime/bin/shoal-node.js");
const shards = 8;
const leaseMs = 3_000;
const names = ["node-a", "node-b", "node-c"] as const;
type Name = (typeof names)[number];
// Money flows from sources to sinks only, so no two transfers wait for each other's account.
const sources = Array.from({ length: 6 }, (_, i) => `src-${i}`);
const sinks = Array.from({ length: 6 }, (_, i) => `dst-${i}`);
const seed = 1_000_000n;

let dir = "";
let nats: NatsCluster;
let nc: NatsConnection;
let members: KV;
const ports = new Map<Name, number>();
const nodes = new Map<Name, Child>();

/** Starts (or restarts, at the same port and directory) one shoal-node, and resolves once it listens. */
async function startNode(name: Name): Promise<Child> {
  const port = ports.get(name) ?? (await freePort());
  ports.set(name, port);
  const path = writeClusterNodeConfig(dir, {
    nodeId: name,
    servers: nats.urls,
    port: port,
    shards,
    leaseMs: leaseMs,
    extra: ["retry: { initialDelayMs: 20, maxDelayMs: 200 }"],
    logLevel: "info",
  });
  const child = start(process.execPath, [shoalNode, "--config", path], { cwd: dir });
  nodes.set(name, child);
  await child.waitFor(/^shoal-node: listening at /m, 60_000);
  return child;
}

const url = (name: Name) => `http://127.0.0.1:${ports.get(name)}`;

/** Each live node's shards, as its membership record says. */
async function membership(): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  const now = Date.now();
  // Gets by key: each is one request with a timeout (listing keys makes a consumer, which may wait through an election).
  for (const key of names) {
    const entry = await members.get(key).catch(() => null);
    if (entry === null || entry.operation !== "PUT") continue;
    const record = entry.json<{ expiresAtMs: number; shards: Array<{ shard: number }> }>();
    if (record.expiresAtMs > now)
      out.set(
        key,
        record.shards.map((s) => s.shard).sort((a, b) => a - b),
      );
  }
  return out;
}

/** Waits until exactly `live` hold every shard between them, each its fair share; resolves with the time that took. */
async function balanced(live: readonly Name[], timeoutMs = 60_000): Promise<number> {
  const started = Date.now();
  for (;;) {
    const view = await membership();
    const held = [...view.values()].flat().sort((a, b) => a - b);
    const fair = [...view.values()].every(
      (s) => s.length >= Math.floor(shards / live.length) && s.length <= Math.ceil(shards / live.length),
    );
    if (
      view.size === live.length &&
      live.every((n) => view.has(n)) &&
      fair &&
      held.join() === Array.from({ length: shards }, (_, s) => s).join()
    )
      return Date.now() - started;
    if (Date.now() - started > timeoutMs)
      throw new Error(`the shards were not balanced over ${live.join(", ")} in ${timeoutMs} ms: ${JSON.stringify([...view])}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Every shard held by the nodes in `live` (not necessarily balanced yet); resolves with the time that took. */
async function covered(live: readonly Name[], timeoutMs = 60_000): Promise<number> {
  const started = Date.now();
  for (;;) {
    const view = await membership();
    const held = new Set(live.flatMap((n) => view.get(n) ?? []));
    if (held.size === shards) return Date.now() - started;
    if (Date.now() - started > timeoutMs)
      throw new Error(`the shards were not covered by ${live.join(", ")} in ${timeoutMs} ms: ${JSON.stringify([...view])}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

interface Outcome {
  status: number;
  json: Record<string, unknown>;
}

/** One request with a client-side timeout (a paused node never answers). */
async function post(ingress: Name, method: string, body: unknown, idempotencyKey: string): Promise<Outcome> {
  const res = await fetch(`${url(ingress)}/bank.v1.Account/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", "idempotency-key": idempotencyKey },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** Errors a client may see and retry: no answer, the ingress gone, or Unavailable. Anything else is recorded as a failure. */
const failures: string[] = [];
let retried = 0;

/** Sends until answered, retrying retryable failures with the same Idempotency-Key through the ingresses in turn. */
async function reliably(ingresses: readonly Name[], method: string, body: unknown, key: string): Promise<Outcome> {
  const deadline = Date.now() + 90_000;
  for (let attempt = 0; ; attempt++) {
    const ingress = ingresses[attempt % ingresses.length] as Name;
    const sentAt = Date.now();
    try {
      const outcome = await post(ingress, method, body, key);
      if (Date.now() - sentAt > 5_000)
        console.log(`cluster-nodes: ${method} ${key} at ${ingress} took ${Date.now() - sentAt} ms: HTTP ${outcome.status}`);
      if (outcome.status === 200) return outcome;
      if (outcome.json.code !== "unavailable") {
        failures.push(`${method} ${key} at ${ingress}: HTTP ${outcome.status} ${JSON.stringify(outcome.json)}`);
        return outcome;
      }
    } catch (err) {
      // connection refused or reset, or our timeout: the node died or is paused
      if (Date.now() - sentAt > 5_000)
        console.log(`cluster-nodes: ${method} ${key} at ${ingress} failed after ${Date.now() - sentAt} ms: ${err}`);
    }
    retried++;
    if (attempt % 50 === 49) console.log(`cluster-nodes: ${method} ${key} still unanswered after ${attempt + 1} attempts`);
    if (Date.now() > deadline) throw new Error(`${method} ${key} was not answered in 90 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const acknowledged: Array<{ id: string; from: string; to: string; amount: bigint }> = [];
let transfers = 0;

/** Runs transfers from sources to sinks through `ingresses` until `stop` resolves. */
async function load(ingresses: () => readonly Name[], stop: Promise<void>, workers = 6): Promise<void> {
  let stopping = false;
  void stop.then(() => {
    stopping = true;
  });
  await Promise.all(
    Array.from({ length: workers }, async (_, w) => {
      while (!stopping) {
        const n = transfers++;
        const from = sources[(n + w) % sources.length] as string;
        const to = sinks[(n * 7 + w) % sinks.length] as string;
        const amount = BigInt(1 + (n % 5));
        const id = `t${n}`;
        const outcome = await reliably(ingresses(), "Transfer", { account: from, to, amount: amount.toString(), transferId: id }, id);
        if (outcome.status === 200) acknowledged.push({ id, from, to, amount });
      }
    }),
  );
}

/** Starts transfers through the ingresses `ingresses()` names, and lets them run a second; `stop` lets them run one more, then ends them. */
async function startLoad(ingresses: () => readonly Name[]): Promise<{ stop(): Promise<void> }> {
  let end: () => void = () => {};
  const running = load(
    ingresses,
    new Promise<void>((resolve) => {
      end = resolve;
    }),
  );
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  return {
    async stop() {
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      end();
      await running;
    },
  };
}

/** Every acknowledged transfer once on both ledgers, nothing else on them, and the total unchanged. */
async function checkLedgers(ingress: Name) {
  const ledgers = new Map<string, Array<{ transferId: string; amount: string }>>();
  let total = 0n;
  for (const account of [...sources, ...sinks]) {
    const { json } = await reliably([ingress], "Get", { account }, `get-${account}-${Date.now()}`);
    const ledger = (json.ledger ?? []) as Array<{ transferId: string; amount: string }>;
    ledgers.set(account, ledger);
    total += BigInt((json.balance as string | undefined) ?? "0");
    const sum = ledger.reduce((s, e) => s + BigInt(e.amount), 0n);
    expect(BigInt((json.balance as string | undefined) ?? "0"), `balance of ${account} is its ledger's sum`).toBe(sum);
  }
  expect(total).toBe(seed * BigInt(sources.length));
  for (const t of acknowledged) {
    expect(
      ledgers.get(t.from)?.filter((e) => e.transferId === t.id),
      `${t.id} withdrawn once from ${t.from}`,
    ).toEqual([{ transferId: t.id, amount: (-t.amount).toString() }]);
    expect(
      ledgers.get(t.to)?.filter((e) => e.transferId === t.id),
      `${t.id} deposited once at ${t.to}`,
    ).toEqual([{ transferId: t.id, amount: t.amount.toString() }]);
  }
  for (const [account, ledger] of ledgers) {
    const ids = ledger.map((e) => e.transferId);
    expect(new Set(ids).size, `no transfer twice on ${account}`).toBe(ids.length);
  }
  expect(failures).toEqual([]);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-cluster-nodes-"));
  nats = await startNatsCluster({ size: 3 });
  nc = await nats.connect();
  for (const name of names) await startNode(name);
  members = await new Kvm(jetstream(nc)).open("shoal-nodes");
  await balanced(names);
}, 180_000);

afterAll(async () => {
  for (const child of nodes.values()) {
    if (child.process.exitCode === null && child.process.signalCode === null) {
      child.process.kill("SIGCONT");
      child.process.kill("SIGKILL");
    }
  }
  await nc?.close();
  await nats?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("three shoal-node processes on a 3-node NATS cluster", () => {
  it("serves any account through any ingress: requests and replies cross nodes, transfers apply once on both sides", {
    timeout: 120_000,
  }, async () => {
    for (const [i, account] of sources.entries()) {
      const ingress = names[i % names.length] as Name;
      expect(
        (await reliably([ingress], "Deposit", { account, amount: seed.toString(), transferId: `seed-${account}` }, `seed-${account}`)).json,
      ).toEqual({
        balance: seed.toString(),
      });
    }
    // Each ingress reads every account: most live on another node.
    for (const name of names)
      for (const account of sources)
        expect((await post(name, "Get", { account }, `get-${name}-${account}`)).json.balance).toBe(seed.toString());
    const done = new Promise<void>((resolve) => setTimeout(resolve, 3_000));
    await load(() => names, done);
    expect(acknowledged.length).toBeGreaterThan(0);
    await checkLedgers("node-a");
  });

  it("hands a SIGKILLed node's shards to the others after its leases expire", { timeout: 180_000 }, async () => {
    const live: Name[] = ["node-a", "node-b"];
    const running = await startLoad(() => names);
    const victim = nodes.get("node-c") as Child;
    const killedAt = Date.now();
    victim.process.kill("SIGKILL");
    await victim.exited;
    await covered(live);
    const afterExpiry = Date.now() - killedAt - leaseMs;
    console.log(`cluster-nodes: the shards of the SIGKILLed node were served again ${afterExpiry} ms after its leases expired (at most)`);
    expect(afterExpiry).toBeLessThan(30_000);
    console.log(`cluster-nodes: covered; balancing`);
    await balanced(live);
    console.log(`cluster-nodes: balanced`);
    await running.stop();
    console.log(`cluster-nodes: load stopped`);
    await checkLedgers("node-a");
    console.log(`cluster-nodes: checked`);
    // It comes back, rejoins and takes its share again.
    await startNode("node-c");
    console.log("cluster-nodes: node-c restarted");
    await balanced(names);
  });

  it("hands a SIGTERMed node's shards over at once, with no error but retryable ones", { timeout: 180_000 }, async () => {
    const running = await startLoad(() => ["node-a", "node-c"]);
    const leaving = nodes.get("node-b") as Child;
    leaving.process.kill("SIGTERM");
    expect(await leaving.exited).toBe(0);
    // It gave its leases up before it exited (written expired), rather than leaving them to run out.
    const leases = await new Kvm(jetstream(nc)).open("shoal-leases");
    for (let shard = 0; shard < shards; shard++) {
      const lease = (await leases.get(String(shard)))?.json<{ owner: string; expiresAtMs: number }>();
      if (lease?.owner === "node-b") expect(lease.expiresAtMs, `the lease of shard ${shard}`).toBe(0);
    }
    expect(leaving.stderr()).toContain("cluster: node node-b left the cluster and released its shards");
    const handover = await covered(["node-a", "node-c"]);
    console.log(`cluster-nodes: the SIGTERMed node's shards were served by the others ${handover} ms after it exited`);
    await running.stop();
    console.log("cluster-nodes: load stopped");
    await checkLedgers("node-c");
    console.log("cluster-nodes: checked");
    await startNode("node-b");
    console.log("cluster-nodes: node-b restarted");
    await balanced(names);
  });

  it("fences a node SIGSTOPped past its lease, which rejoins after SIGCONT without doubling a transfer", { timeout: 180_000 }, async () => {
    const running = await startLoad(() => names);
    const paused = nodes.get("node-a") as Child;
    paused.process.kill("SIGSTOP");
    await covered(["node-b", "node-c"]);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    paused.process.kill("SIGCONT");
    await balanced(names);
    expect(paused.stderr()).toMatch(
      /gives shard \d+ up \((its lease expired before it was renewed|another node took its lease|it stopped here: another node fenced its log)\)/,
    );
    await running.stop();
    await checkLedgers("node-b");
    console.log(`cluster-nodes: ${acknowledged.length} transfers acknowledged, ${retried} retries in all`);
  });
});
