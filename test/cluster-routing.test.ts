// Routing between the nodes of a cluster (issue 10 item 3) over a real
// nats-server: the NATS transport, the lease directory, and a forwarded
// request whose owner dies before it replies. The nodes run in this process,
// each with its own NATS connection and its ingress on a real socket.
import { create } from "@bufbuild/protobuf";
import type { NatsConnection } from "@nats-io/transport-node";
import { createMemoryStorage, createRuntime, createShardOwnership, listen } from "@shoal/runtime";
import { shardOf } from "@shoal/runtime/internal";
import { implement } from "@shoal/sdk";
import { EnvelopeSchema } from "@shoal/sdk/internal";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { account } from "../examples/bank/src/account.js";
import { AccountFunction, type AccountHandlers } from "../examples/bank/src/gen/bank/v1/account_shoal.js";
import { createLeaseDirectory, type LeaseDirectory } from "../packages/runtime/src/cluster/lease-directory.js";
import { createNatsTransport } from "../packages/runtime/src/cluster/nats-transport.js";
import { createShardLeases } from "../packages/runtime/src/cluster/shard-lease.js";
import { ShardUnavailableError } from "../packages/runtime/src/shard/shard-processor.js";
import { FencedError } from "../packages/runtime/src/storage/storage.js";
import { type NatsCluster, startNatsCluster } from "./support/nats-cluster.js";

const shards = 4;
let nats: NatsCluster;
let cleanups: Array<() => Promise<void>> = [];
let test = 0;

beforeAll(async () => {
  nats = await startNatsCluster({ size: 1 });
}, 60_000);
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  cleanups = [];
});
afterAll(async () => {
  await nats?.close();
});

async function connection(): Promise<NatsConnection> {
  const nc = await nats.connect();
  cleanups.push(() => nc.close());
  return nc;
}

/**
 * A node of a cluster in this process: its own connection, the lease
 * directory and the NATS transport. Each test has its own buckets and
 * subjects, so leases of one test do not route another's requests.
 */
async function node(nodeId: string, owned: number[], handlers: AccountHandlers = account, bucket = `t${++test}-leases`, ttlMs = 3_000) {
  const nc = await connection();
  const leases = await createShardLeases({ connection: nc, owner: nodeId, ttlMs, bucket });
  const directory = await createLeaseDirectory({ connection: nc, bucket, pollMs: 200 });
  cleanups.push(async () => directory.close());
  const runtime = createRuntime({
    functions: [implement(AccountFunction, handlers)],
    storage: createMemoryStorage(),
    shards,
    nodeId,
    ownership: createShardOwnership(owned),
    directory,
    transport: createNatsTransport({ connection: nc }),
    logger: "silent",
  });
  // Taken for good: nothing renews them, so a test that lets one lapse stands for the holder's death.
  for (const shard of owned) expect(await leases.acquire(shard)).toBeDefined();
  await directory.ready;
  await runtime.start();
  cleanups.push(() => runtime.close());
  return { nc, runtime, directory, bucket };
}

/** A node that owns no shard, with its ingress on a socket: every request it takes goes to another node. */
async function frontNode(nodeId: string, bucket: string): Promise<{ url: string; directory: LeaseDirectory }> {
  const nc = await connection();
  const directory = await createLeaseDirectory({ connection: nc, bucket, pollMs: 200 });
  cleanups.push(async () => directory.close());
  await directory.ready;
  const runtime = createRuntime({
    functions: [implement(AccountFunction, account)],
    storage: createMemoryStorage(),
    shards,
    nodeId,
    ownership: createShardOwnership([]),
    directory,
    transport: createNatsTransport({ connection: nc }),
    logger: "silent",
  });
  await runtime.start();
  cleanups.push(() => runtime.close());
  const server = await listen(runtime, { port: 0 });
  cleanups.push(() => server.close());
  return { url: server.url, directory };
}

async function call(url: string, method: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${url}/bank.v1.Account/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** Waits until `check` holds. */
async function until(check: () => boolean) {
  while (!check()) await new Promise((resolve) => setTimeout(resolve, 50));
}

describe("routing between nodes over NATS", () => {
  it("serves a request through a node that owns no shard: the owner takes it and its reply comes back", async () => {
    const all = Array.from({ length: shards }, (_, shard) => shard);
    // One bucket for both: each node's leases are the same bucket's keys.
    const owner = await node("owner", all);
    const { url } = await frontNode("front", owner.bucket);
    expect(await call(url, "Deposit", { account: "alice", amount: "7", transferId: "d1" })).toEqual({
      status: 200,
      json: { balance: "7" },
    });
    expect(await call(url, "Transfer", { account: "alice", to: "bob", amount: "3", transferId: "t1" })).toMatchObject({
      status: 200,
      json: { balance: "4" },
    });
    expect(owner.runtime.stateOf(AccountFunction, "bob")?.balance).toBe(3n);
  });

  it("rebuilds the owner's refusal as a retryable error, and names a node that does not answer", async () => {
    const nc = await connection();
    const transport = createNatsTransport({ connection: nc, timeoutMs: 2_000 });
    const envelope = create(EnvelopeSchema, { id: "m1", target: { type: AccountFunction.typeName, key: "alice" }, handler: "Get" });
    const refusals: Error[] = [new ShardUnavailableError("shard 1 is moving"), new FencedError("shard 1 was fenced")];
    const detach = transport.attach("refusing", {
      receive: () => Promise.reject(refusals.shift()),
      receiveReply: () => {},
      heldCall: () => undefined,
      // No invocation runs here: nothing awaits, no cycle to break, no call to take back.
      waitsOf: () => [],
      breakCycle: async () => false,
      withdrawCall: async () => false,
    });
    cleanups.push(async () => detach());
    await expect(transport.send("refusing", envelope, "deliver")).rejects.toThrow(
      new ShardUnavailableError("shard 1 is moving (at node refusing)"),
    );
    const fenced = await transport.send("refusing", envelope, "deliver").catch((err: unknown) => err);
    expect(fenced).toBeInstanceOf(ShardUnavailableError);
    expect((fenced as Error).message).toBe("shard 1 was fenced (at node refusing)");
    const nobody = await transport.send("nobody", envelope, "accept").catch((err: unknown) => err);
    expect(nobody).toBeInstanceOf(ShardUnavailableError);
    expect((nobody as Error).message).toMatch(
      /^node nobody did not take message m1 for bank.v1.Account\/alice \(.*\): it stopped, is paused or lost its NATS connection; retry$/,
    );
  });

  it("fails a forwarded request with Unavailable once its owner is gone, instead of waiting for a reply that never comes", async () => {
    let started: () => void = () => {};
    const running = new Promise<void>((resolve) => {
      started = resolve;
    });
    // The owner takes the deposit and never answers it: its process stands still, then dies.
    const stuck: AccountHandlers = {
      ...account,
      deposit: () =>
        new Promise(() => {
          started();
        }),
    };
    const shard = shardOf(AccountFunction.typeName, "carol", shards);
    const owner = await node("doomed", [shard], stuck);
    const { url, directory } = await frontNode("survivor", owner.bucket);
    await until(() => directory.ownerOf(shard) === "doomed");
    const answer = call(url, "Deposit", { account: "carol", amount: "5", transferId: "d1" });
    await running;
    // The owner vanishes from NATS and its lease runs out, unrenewed.
    await owner.nc.close();
    const { status, json } = await answer;
    expect(status).toBe(503);
    expect(json.code).toBe("unavailable");
    expect(json.message).toContain("node doomed, which took the request for shard");
    expect(json.message).toContain("no longer owns the shard");
  });

  it("fails a call cycle across nodes at once with FailedPrecondition naming it (a -> b -> a, a and b on different nodes)", async () => {
    const a = "a";
    const b = ["b", "c", "d", "e", "f", "g"].find(
      (key) => shardOf(AccountFunction.typeName, key, shards) !== shardOf(AccountFunction.typeName, a, shards),
    ) as string;
    // b's deposit calls back into a, which is locked awaiting b.
    const callingBack: AccountHandlers = {
      ...account,
      async deposit(req, ctx) {
        if (ctx.key === b) await ctx.call(AccountFunction).deposit({ account: a, amount: 1n, transferId: "" });
        return account.deposit(req, ctx);
      },
    };
    const bucket = `t${++test}-leases`;
    const first = await node("cycle-1", [shardOf(AccountFunction.typeName, a, shards)], callingBack, bucket, 120_000);
    await node("cycle-2", [shardOf(AccountFunction.typeName, b, shards)], callingBack, bucket, 120_000);
    const { url, directory } = await frontNode("cycle-front", bucket);
    await until(() => directory.ownerOf(shardOf(AccountFunction.typeName, b, shards)) === "cycle-2");
    await until(() => first.directory.ownerOf(shardOf(AccountFunction.typeName, b, shards)) === "cycle-2");
    expect((await call(url, "Deposit", { account: a, amount: "100" })).status).toBe(200);
    const { status, json } = await call(url, "Transfer", { account: a, to: b, amount: "10", transferId: "t1" });
    expect({ status, json }).toEqual({
      status: 400,
      json: {
        code: "failed_precondition",
        message: `call cycle: bank.v1.Account/${a} -> bank.v1.Account/${b} -> bank.v1.Account/${a} (the instance is locked awaiting this call)`,
      },
    });
    expect(first.runtime.stateOf(AccountFunction, a)?.balance).toBe(100n);
  });
});
