// A lost NATS connection under a running `shoal-node` on the nats backend
// (issue 10, operations): while the only nats-server is down, requests get
// Unavailable (retryable) and /healthz says not ready, naming NATS; once it is
// back, the node reconnects by itself and requests succeed again, with every
// acknowledged deposit applied exactly once. Runs the built bin (npm run build first).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";
import { shoal, startBankNodeOnNats } from "./support/nats-node.js";
import { type Child, freePort } from "./support/processes.js";

let dir = "";
let nats: NatsCluster;
let node: Child | undefined;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-nats-connection-"));
  nats = await startNatsCluster({ size: 1 });
}, 60_000);
afterAll(async () => {
  if (node !== undefined && node.process.exitCode === null && node.process.signalCode === null) node.process.kill("SIGKILL");
  await nats?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A deposit's outcome: the balance, or the Connect error code and message. */
type Outcome = { ok: true; balance: string } | { ok: false; status: number; code: string; message: string };

// The client's own deadline: a request the node leaves hanging fails the test instead of waiting forever.
const requestDeadlineMs = 30_000;

async function deposit(url: string, transferId: string, amount: number): Promise<Outcome> {
  const res = await fetch(`${url}/bank.v1.Account/Deposit`, {
    method: "POST",
    headers: { "content-type": "application/json", "idempotency-key": `deposit-${transferId}` },
    body: JSON.stringify({ account: "alice", amount: String(amount), transferId }),
    signal: AbortSignal.timeout(requestDeadlineMs),
  });
  const json = (await res.json()) as { balance?: string; code?: string; message?: string };
  if (res.ok) return { ok: true, balance: json.balance ?? "0" };
  return { ok: false, status: res.status, code: json.code ?? "", message: json.message ?? "" };
}

async function metrics(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(requestDeadlineMs) })).text();
}

async function healthz(url: string): Promise<{ status: number; text: string }> {
  const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(requestDeadlineMs) });
  return { status: res.status, text: await res.text() };
}

describe("a node on the nats backend when NATS goes away", () => {
  it("answers Unavailable while nats-server is down, reconnects when it is back and loses nothing acknowledged", {
    timeout: 240_000,
  }, async () => {
    // Leases far longer than the outage: this test is about the connection, not about a node giving its shards up.
    const started = await startBankNodeOnNats({ dir, servers: nats.urls, port: await freePort(), extra: ["cluster: { leaseMs: 120000 }"] });
    node = started.child;
    const url = started.url;
    expect((await healthz(url)).status).toBe(200);
    const serverAddress = new URL(nats.urls[0] as string).host;
    expect(await metrics(url)).toContain(`shoal_nats_connection{state="connected",server="${serverAddress}"} 1`);

    const acknowledged = new Map<string, number>();
    for (let i = 1; i <= 3; i++) {
      const outcome = await deposit(url, `before-${i}`, i);
      expect(outcome).toMatchObject({ ok: true });
      acknowledged.set(`before-${i}`, i);
    }

    const server = nats.servers[0];
    if (server === undefined) throw new Error("the test cluster has no server");
    await server.kill();

    // Every shard of the bank's account "alice" and others: each answer is Unavailable, none Internal, none hangs.
    const whileDown: Outcome[] = [];
    for (let i = 1; i <= 3; i++) whileDown.push(await deposit(url, `down-${i}`, 10 * i));
    for (const outcome of whileDown) {
      expect(outcome, JSON.stringify(outcome)).toMatchObject({ ok: false, status: 503, code: "unavailable" });
    }
    // The first one's append was in flight when the connection went: its message says why.
    expect(whileDown[0]).toMatchObject({
      message: expect.stringContaining(`the NATS connection is lost: the node reconnects to ${nats.urls[0]} by itself`),
    });
    const down = await healthz(url);
    // shoal status still answers with the node's own part, the connection's state, and why the cluster's is missing.
    const status = JSON.parse(await shoal(["status", "--url", url, "--json"])) as {
      nats?: { state?: string };
      shardStatus?: unknown[];
      cluster?: { error?: string };
    };
    expect(status.nats?.state).toBe("reconnecting");
    // Every shard but alice's, whose append failed: it is reopened once NATS is back.
    expect(status.shardStatus).toHaveLength(3);
    expect(status.cluster?.error).toMatch(/^JetStream is not available: /);
    expect(down.status).toBe(503);
    expect(down.text).toContain(`NATS connection lost (last server ${serverAddress}); reconnecting to ${nats.urls[0]}`);
    const downMetrics = await metrics(url);
    expect(downMetrics).toContain(`shoal_nats_connection{state="reconnecting",server="${serverAddress}"} 1`);
    expect(downMetrics).toContain(`shoal_nats_connection{state="connected",server="${serverAddress}"} 0`);
    expect(downMetrics).toMatch(/^shoal_wal_append_errors\{shard="\d+"\} [1-9]/m);

    await server.restart();
    // The node reconnects on its own; the deposits made while it was down are retried with their keys until they succeed.
    for (let i = 1; i <= 3; i++) {
      const transferId = `down-${i}`;
      for (let attempt = 1; ; attempt++) {
        const outcome = await deposit(url, transferId, 10 * i);
        if (outcome.ok) break;
        expect(outcome, JSON.stringify(outcome)).toMatchObject({ status: 503, code: "unavailable" });
        // Far more than a reconnect and a shard's recovery take: a node that never comes back fails here, not by the test's timeout.
        if (attempt === 240) throw new Error(`deposit ${transferId} still fails after nats-server restarted: ${JSON.stringify(outcome)}`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      acknowledged.set(transferId, 10 * i);
    }
    expect(await healthz(url)).toEqual({ status: 200, text: "ok\n" });
    expect(node.process.exitCode).toBeNull();
    const upMetrics = await metrics(url);
    expect(upMetrics).toContain(`shoal_nats_connection{state="connected",server="${serverAddress}"} 1`);
    expect(upMetrics).toMatch(/^shoal_nats_reconnects [1-9]/m);
    expect(upMetrics).toMatch(/^shoal_wal_appends\{shard="\d+"\} [1-9]/m);

    const res = await fetch(`${url}/bank.v1.Account/Get`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ account: "alice" }),
    });
    const state = (await res.json()) as { balance: string; ledger: Array<{ transferId: string; amount: string }> };
    // Each acknowledged deposit exactly once: a deposit whose append was lost with the connection and retried is not doubled.
    expect(state.ledger.map((e) => e.transferId).sort()).toEqual([...acknowledged.keys()].sort());
    expect(state.balance).toBe(String([...acknowledged.values()].reduce((a, b) => a + b, 0)));
  });
});
