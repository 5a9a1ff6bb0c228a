// Two runtime nodes in one process over one shared local store, each owning
// part of the shards, connected by the in-process transport (issue 7, items 3
// and 4). Bank transfers go in through both nodes' ingress and cross nodes;
// then shards move between the nodes while transfers run. Each check: every
// acknowledged transfer is applied exactly once on both ledgers, money is
// conserved, and every request gets its reply or a retryable Unavailable.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import {
  createInProcessTransport,
  createLocalStorage,
  createMemoryDirectory,
  createMemoryStorage,
  createRuntime,
  createShardOwnership,
  type Runtime,
  type ShardDirectory,
  type ShardStorage,
} from "@shoal/runtime";
import { shardOf } from "@shoal/runtime/internal";
import { createFunctionClient, type FunctionClient, implement } from "@shoal/sdk";
import { afterEach, describe, expect, it } from "vitest";
import { account } from "../examples/bank/src/account.js";
import { AccountFunction } from "../examples/bank/src/gen/bank/v1/account_shoal.js";

const shards = 8;
const seed = 1_000_000n;
// Money flows from sources to sinks only, so no two transfers can wait for
// each other's account (the wait-for graph of call cycles is per node).
const sources = Array.from({ length: 8 }, (_, i) => `src-${i}`);
const sinks = Array.from({ length: 8 }, (_, i) => `dst-${i}`);

interface Cluster {
  readonly nodes: readonly [Runtime, Runtime];
  readonly directory: ShardDirectory;
  readonly clients: ReadonlyArray<FunctionClient<typeof AccountFunction.service>>;
  close(): Promise<void>;
}

let cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups = [];
});

async function twoNodes(): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), "shoal-two-nodes-"));
  const storage: ShardStorage = await createLocalStorage({ directory: dir });
  const directory = createMemoryDirectory();
  const transport = createInProcessTransport();
  const node = (nodeId: string, owned: number[]) =>
    createRuntime({
      functions: [implement(AccountFunction, account)],
      storage,
      shards,
      nodeId,
      ownership: createShardOwnership(owned),
      directory,
      transport,
      // Both nodes write to one backend: it is closed once, after both.
      closeStorage: false,
      retry: { initialDelayMs: 10, maxDelayMs: 100 },
      logger: "silent",
    });
  const all = Array.from({ length: shards }, (_, shard) => shard);
  const nodes = [
    node(
      "node-a",
      all.filter((s) => s % 2 === 0),
    ),
    node(
      "node-b",
      all.filter((s) => s % 2 === 1),
    ),
  ] as const;
  await Promise.all(nodes.map((n) => n.start()));
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await Promise.all(nodes.map((n) => n.close()));
    await storage.close();
    rmSync(dir, { recursive: true, force: true });
  };
  cleanups.push(close);
  const clients = nodes.map((n) => createFunctionClient(AccountFunction, createRouterTransport(n.routes)));
  return { nodes, directory, clients, close };
}

const errorOf = (e: unknown) => ConnectError.from(e);
/** Unavailable answers seen, each retried. */
let unavailable = 0;

/**
 * Runs one request until it gets a reply other than Unavailable, at most
 * `attempts` times (while no shard moves, the first must do). Each attempt
 * must end: one that hangs fails the test, naming the request.
 */
async function untilAnswered<T>(what: string, attempt: () => Promise<T>, attempts = 1_000): Promise<T> {
  for (let n = 1; ; n++) {
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: attempt ${n} got no answer (a request hung)`)), 20_000);
    });
    try {
      return await Promise.race([attempt(), hung]);
    } catch (e) {
      const err = e instanceof Error && e.message.includes("hung") ? e : errorOf(e);
      if (!(err instanceof ConnectError) || err.code !== Code.Unavailable || n >= attempts) throw err;
      unavailable++;
      await new Promise((resolve) => setTimeout(resolve, 5));
    } finally {
      clearTimeout(timer);
    }
  }
}

async function seedSources(cluster: Cluster) {
  for (const [i, name] of sources.entries()) {
    await untilAnswered(
      `seed ${name}`,
      () => cluster.clients[i % 2]!.deposit({ account: name, amount: seed }, { idempotencyKey: `seed-${name}` }),
      1,
    );
  }
}

/** Reads every account through the ingress and checks the ledgers against the acknowledged transfers. */
async function checkBooks(cluster: Cluster, acknowledged: ReadonlyMap<string, { from: string; to: string; amount: bigint }>) {
  let total = 0n;
  const entries = new Map<string, bigint[]>();
  for (const [i, name] of [...sources, ...sinks].entries()) {
    const view = await untilAnswered(`get ${name}`, () => cluster.clients[i % 2]!.get({ account: name }));
    total += view.balance;
    let sum = 0n;
    for (const entry of view.ledger) {
      sum += entry.amount;
      const key = `${name}:${entry.transferId}`;
      entries.set(key, [...(entries.get(key) ?? []), entry.amount]);
    }
    // A source's ledger also lacks its seed deposit (no transfer id).
    expect(view.balance, `${name}'s balance against its ledger`).toBe(sum + (sources.includes(name) ? seed : 0n));
  }
  expect(total, "money conserved").toBe(seed * BigInt(sources.length));
  for (const [id, t] of acknowledged) {
    expect(entries.get(`${t.from}:${id}`), `${id} withdrawn once from ${t.from}`).toEqual([-t.amount]);
    expect(entries.get(`${t.to}:${id}`), `${id} deposited once into ${t.to}`).toEqual([t.amount]);
  }
  // Nothing was applied that was never acknowledged: every transfer is retried to its end.
  expect(entries.size, "ledger entries").toBe(acknowledged.size * 2);
}

/** Transfers from sources to sinks, each retried with its Idempotency-Key through alternating nodes until answered. */
async function runTransfers(cluster: Cluster, worker: number, keepGoing: (n: number) => boolean, attempts?: number) {
  const done = new Map<string, { from: string; to: string; amount: bigint }>();
  for (let n = 0; keepGoing(n); n++) {
    const from = sources[(worker + n) % sources.length]!;
    const to = sinks[(worker * 3 + n * 5) % sinks.length]!;
    const transferId = `w${worker}-t${n}`;
    const amount = BigInt(1 + ((worker + n) % 7));
    let attempt = 0;
    const reply = await untilAnswered(
      transferId,
      () => cluster.clients[(worker + attempt++) % 2]!.transfer({ account: from, to, amount, transferId }, { idempotencyKey: transferId }),
      attempts,
    );
    expect(reply.transferId).toBe(transferId);
    done.set(transferId, { from, to, amount });
  }
  return done;
}

describe("two nodes in one process", () => {
  it("each owns half of the shards; transfers cross nodes and each is applied exactly once", async () => {
    const cluster = await twoNodes();
    const [a, b] = cluster.nodes;
    expect(a.ownership.owned()).toEqual([0, 2, 4, 6]);
    expect(b.ownership.owned()).toEqual([1, 3, 5, 7]);
    const ownerOf = (name: string) => cluster.directory.ownerOf(shardOf(AccountFunction.typeName, name, shards));
    // The accounts are spread over both nodes, so transfers cross them both ways.
    const crossing = sources.flatMap((s) => sinks.filter((d) => ownerOf(s) !== ownerOf(d)));
    expect(crossing.length).toBeGreaterThan(0);
    expect(new Set([...sources, ...sinks].map(ownerOf))).toEqual(new Set(["node-a", "node-b"]));

    await seedSources(cluster);
    const results = await Promise.all(Array.from({ length: 6 }, (_, w) => runTransfers(cluster, w, (n) => n < 40, 1)));
    const acknowledged = new Map(results.flatMap((r) => [...r]));
    expect(acknowledged.size).toBe(240);
    // Each node holds only its own shards' instances.
    expect(a.keysOf(AccountFunction.typeName).every((k) => ownerOf(k) === "node-a")).toBe(true);
    expect(b.keysOf(AccountFunction.typeName).every((k) => ownerOf(k) === "node-b")).toBe(true);
    await checkBooks(cluster, acknowledged);
  });

  it("a node whose shard another node took over stops it: its request is answered Unavailable, nothing committed, and it does not take the shard back", async () => {
    const cluster = await twoNodes();
    const [a, b] = cluster.nodes;
    const name = Array.from({ length: 100 }, (_, i) => `acct-${i}`).find((n) => shardOf(AccountFunction.typeName, n, shards) === 2) ?? "";
    expect(cluster.directory.ownerOf(2)).toBe("node-a");
    // b opens shard 2 while a still serves it: a's log handle is fenced.
    await b.acquireShard(2);
    const refused = await cluster.clients[0]!.deposit({ account: name, amount: 5n }, { idempotencyKey: "d1" }).catch((e: unknown) =>
      errorOf(e),
    );
    expect(refused).toBeInstanceOf(ConnectError);
    expect((refused as ConnectError).code).toBe(Code.Unavailable);
    expect((refused as ConnectError).rawMessage).toContain("moved to another node");
    // The shard moved: a forgets it (no recovery that would fence b in turn).
    expect(a.ownership.owns(2)).toBe(false);
    expect(a.status().map((s) => s.shard)).not.toContain(2);
    expect(cluster.directory.ownerOf(2)).toBe("node-b");
    // The retry goes through a to b, and is applied once.
    expect(await cluster.clients[0]!.deposit({ account: name, amount: 5n }, { idempotencyKey: "d1" })).toMatchObject({ balance: 5n });
    expect(await cluster.clients[1]!.deposit({ account: name, amount: 5n }, { idempotencyKey: "d1" })).toMatchObject({ balance: 5n });
    expect(b.stateOf(AccountFunction, name)?.balance).toBe(5n);
  });

  it("shards move between the nodes under load: fenced, nothing hangs, every transfer applied once", async () => {
    const cluster = await twoNodes();
    const [a, b] = cluster.nodes;
    await seedSources(cluster);
    // Sixteen moves, each shard twice, a few hundred ms apart, while transfers run until the last.
    let moves = 0;
    let stopped = false;
    const mover = (async () => {
      for (let n = 0; n < 16; n++) {
        const shard = (n * 3) % shards;
        const [from, to] = a.ownership.owns(shard) ? [a, b] : [b, a];
        // The new owner takes the shard first: its openShard fences the old
        // owner's log while that still serves, whose late appends are then
        // refused with FencedError. Then the old owner lets go.
        await to.acquireShard(shard);
        await new Promise((resolve) => setTimeout(resolve, 20));
        await from.releaseShard(shard);
        moves++;
        await new Promise((resolve) => setTimeout(resolve, 150));
      }
    })().finally(() => {
      stopped = true;
    });
    const results = await Promise.all(Array.from({ length: 8 }, (_, w) => runTransfers(cluster, w, () => !stopped)));
    await mover;
    expect(moves).toBe(16);
    // The moves met requests in flight: some were answered Unavailable, and retried.
    expect(unavailable).toBeGreaterThan(0);
    // Every shard has exactly one owner, known to the directory.
    for (let shard = 0; shard < shards; shard++) {
      expect(a.ownership.owns(shard) !== b.ownership.owns(shard), `shard ${shard} has one owner`).toBe(true);
      expect(cluster.directory.ownerOf(shard)).toBe(a.ownership.owns(shard) ? "node-a" : "node-b");
    }
    const acknowledged = new Map(results.flatMap((r) => [...r]));
    expect(acknowledged.size).toBeGreaterThan(0);
    await checkBooks(cluster, acknowledged);
  });
});

describe("the reply channel", () => {
  it("answers each request at its own address: a key reused with another request fails alone, the first still gets its reply", async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    let entered: () => void = () => {};
    const inside = new Promise<void>((resolve) => (entered = resolve));
    const runtime = createRuntime({
      functions: [
        implement(AccountFunction, {
          ...account,
          async deposit(req, ctx) {
            entered();
            await gate;
            return account.deposit(req, ctx);
          },
        }),
      ],
      storage: createMemoryStorage(),
      shards: 2,
      logger: "silent",
    });
    await runtime.start();
    cleanups.push(() => runtime.close());
    const client = createFunctionClient(AccountFunction, createRouterTransport(runtime.routes));
    const first = client.deposit({ account: "x", amount: 5n }, { idempotencyKey: "k" });
    await inside;
    // The same key with another request, while the first is in flight: same envelope id.
    const reused = await client.deposit({ account: "x", amount: 6n }, { idempotencyKey: "k" }).catch((e: unknown) => errorOf(e));
    expect(reused).toBeInstanceOf(ConnectError);
    expect((reused as ConnectError).code).toBe(Code.InvalidArgument);
    release();
    expect(await first).toMatchObject({ balance: 5n });
  });
});
