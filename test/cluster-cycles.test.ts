// Call cycles between chains that cross nodes (issue 10 item 3): two
// `shoal-node` processes on a real nats-server serve the bank example; a
// client transfers a -> b through a's node while another transfers b -> a
// through b's node, at the same moment, many times. When both transfers hold
// their account locked awaiting the other's deposit, neither node's own
// wait-for graph sees the cycle; the nodes must still fail one of the two
// with FailedPrecondition naming it (as one node does), never hang.
// Runs the built bin (npm run build first).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { shardOf } from "@shoal/runtime/internal";
import { afterAll, beforeAll, expect, it } from "vitest";
import { writeClusterNodeConfig } from "./support/cluster-nodes.js";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";
import { type Child, freePort, repoRoot, start } from "./support/processes.js";

const shoalNode = join(repoRoot, "packages/runtime/bin/shoal-node.js");
const shards = 4;
const names = ["cycle-1", "cycle-2"] as const;
type Name = (typeof names)[number];
const account = "bank.v1.Account";

let dir = "";
let nats: NatsCluster;
let nc: NatsConnection;
const ports = new Map<Name, number>();
const nodes = new Map<Name, Child>();

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-cluster-cycles-"));
  nats = await startNatsCluster({ size: 1 });
  nc = await nats.connect();
  for (const name of names) {
    const port = await freePort();
    ports.set(name, port);
    const path = writeClusterNodeConfig(dir, {
      nodeId: name,
      servers: nats.urls,
      port: port,
      shards,
      leaseMs: 3000,
      logLevel: "info",
    });
    const child = start(process.execPath, [shoalNode, "--config", path], { cwd: dir });
    nodes.set(name, child);
    await child.waitFor(/^shoal-node: listening at /m, 60_000);
  }
}, 120_000);

afterAll(async () => {
  for (const child of nodes.values())
    if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill("SIGKILL");
  await nc?.close();
  await nats?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Waits until each node holds half the shards (its membership record), and returns which node holds which. */
async function owners(): Promise<Map<number, Name>> {
  const members = await new Kvm(jetstream(nc)).open("shoal-nodes");
  for (const started = Date.now(); Date.now() - started < 60_000; await new Promise((resolve) => setTimeout(resolve, 200))) {
    const out = new Map<number, Name>();
    for (const name of names) {
      const entry = await members.get(name).catch(() => null);
      if (entry === null || entry.operation !== "PUT") continue;
      for (const { shard } of entry.json<{ shards: Array<{ shard: number }> }>().shards) out.set(shard, name);
    }
    if (out.size === shards && names.every((n) => [...out.values()].filter((o) => o === n).length === shards / 2)) return out;
  }
  throw new Error("the two nodes did not share the shards in 60 s");
}

interface Outcome {
  status: number;
  json: Record<string, unknown>;
}

/** One request; a request not answered in 15 s fails the test as hung (a deadlock has no other symptom). */
async function post(ingress: Name, method: string, body: unknown): Promise<Outcome> {
  const res = await fetch(`http://127.0.0.1:${ports.get(ingress)}/bank.v1.Account/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  }).catch((err) => {
    throw new Error(`${method} ${JSON.stringify(body)} at ${ingress} got no answer in 15 s (${err}): the transfers deadlocked`);
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** A transfer, retried while its answer is the retryable Unavailable. */
async function transfer(ingress: Name, from: string, to: string, transferId: string): Promise<Outcome> {
  for (;;) {
    const outcome = await post(ingress, "Transfer", { account: from, to, amount: "1", transferId });
    if (outcome.json.code !== "unavailable") return outcome;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

it("two transfers crossing between nodes at the same moment (a -> b on a's node, b -> a on b's node): one fails with FailedPrecondition naming the cycle, none hangs", async () => {
  const byShard = await owners();
  const keyOn = (node: Name) =>
    Array.from({ length: 100 }, (_, i) => `acct-${i}`).find((k) => byShard.get(shardOf(account, k, shards)) === node) as string;
  const a = keyOn("cycle-1");
  const b = keyOn("cycle-2");
  const seed = 1_000n;
  for (const [key, ingress] of [
    [a, "cycle-1"],
    [b, "cycle-2"],
  ] as const) {
    expect((await post(ingress, "Deposit", { account: key, amount: seed.toString() })).status).toBe(200);
  }
  // The answer made up at the caller names the cycle; the one the callee keeps for a call it refused or took back
  // (which a caller run again gets instead) names the call.
  const cycle = new RegExp(
    `^call cycle: (${account}/(${a}|${b}) -> ${account}/(${a}|${b}) -> ${account}/(${a}|${b}) \\(each instance is locked awaiting the next\\)|call \\S+ to ${account}/(${a}|${b}) was withdrawn before it ran, to break a call cycle between nodes)$`,
  );
  let crossed = 0;
  let passed = 0;
  const expected = new Map<string, bigint>([
    [a, seed],
    [b, seed],
  ]);
  // Until the race happened often enough: both transfers held their account locked at once.
  for (let round = 0; round < 200 && crossed < 5; round++) {
    const [ab, ba] = await Promise.all([transfer("cycle-1", a, b, `ab-${round}`), transfer("cycle-2", b, a, `ba-${round}`)]);
    const failed = [ab, ba].filter((o) => o.status !== 200);
    if (failed.length === 0) {
      passed++;
      continue;
    }
    crossed++;
    // One chain fails, as on one node; the other goes through.
    expect(failed).toHaveLength(1);
    expect(failed[0]?.json.code).toBe("failed_precondition");
    expect(failed[0]?.json.message).toMatch(cycle);
    const [from, to] = ab.status === 200 ? [a, b] : [b, a];
    expected.set(from, (expected.get(from) ?? 0n) - 1n);
    expected.set(to, (expected.get(to) ?? 0n) + 1n);
  }
  console.log(`cluster-cycles: ${crossed} rounds crossed, ${passed} did not`);
  expect(crossed).toBeGreaterThanOrEqual(5);
  // The failed transfer committed nothing: its withdrawal was discarded, its deposit never ran.
  for (const [key, ingress] of [
    [a, "cycle-1"],
    [b, "cycle-2"],
  ] as const) {
    const { json } = await post(ingress, "Get", { account: key });
    expect(BigInt((json.balance as string | undefined) ?? "0"), `balance of ${key}`).toBe(expected.get(key));
  }
}, 300_000);
