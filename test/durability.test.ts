// Durability on the local backend across restarts of an in-process runtime:
// idempotency keys, call memos, durable timers and state TTL survive, and
// a re-run that calls differently fails with a clear error.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRegistry, type DescMessage, fromBinary, type Message } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { createLocalStorage, createManualClock, createRuntime, type Egress, type ManualClock, type Runtime } from "@shoal/runtime";
import { createFunctionClient, type FunctionClient, type FunctionType, type Implementation, implement } from "@shoal/sdk";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { account } from "../examples/bank/src/account.js";
import { AccountFunction } from "../examples/bank/src/gen/bank/v1/account_shoal.js";
import { GreeterFunction } from "../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { greeter } from "../examples/greeter/src/greeter.js";
import { abandonedAfterMs } from "../examples/shopping-cart/src/cart.js";
import { CartFunction } from "../examples/shopping-cart/src/gen/shop/v1/cart_shoal.js";
import { InventoryFunction } from "../examples/shopping-cart/src/gen/shop/v1/inventory_shoal.js";
import shop from "../examples/shopping-cart/src/module.js";

const day = 24 * 3600_000;
let dir: string;
let clock: ManualClock;
let egressed: Array<{ egress: string; message: Message | undefined }>;
let running: Runtime | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "shoal-durability-"));
  clock = createManualClock(Date.UTC(2026, 0, 1));
  egressed = [];
});
afterEach(async () => {
  await running?.close().catch(() => {});
  running = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** Starts a node on `dir`; a second call after `stop()` is a restart. */
async function boot(functions: readonly Implementation[], options: { instanceCacheSize?: number } = {}) {
  const registry = createRegistry(...functions.map((f) => f.fn.service.file));
  const capture: Egress = {
    async deliver(m) {
      const schema = registry.getMessage(m.typeName);
      egressed.push({ egress: m.egress, message: schema ? fromBinary(schema, m.payload) : undefined });
    },
  };
  const runtime = createRuntime({
    functions,
    storage: await createLocalStorage({ directory: dir }),
    shards: 4,
    clock,
    instanceCacheSize: options.instanceCacheSize,
    logger: "silent",
    defaultEgress: capture,
    retry: { maxAttempts: 2, initialDelayMs: 1, maxDelayMs: 1 },
  });
  await runtime.start();
  running = runtime;
  const transport = createRouterTransport(runtime.routes);
  return {
    runtime,
    client: <Svc extends GenService<GenServiceMethods>>(fn: FunctionType<Svc, DescMessage | undefined, unknown>): FunctionClient<Svc> =>
      createFunctionClient(fn, transport),
  };
}

async function stop() {
  await running?.close();
  running = undefined;
}

const settle = async () => {
  for (let i = 0; i < 10; i++) {
    await running?.whenIdle();
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
};

/** The greeter, counting how often its Greet handler runs. */
function countingGreeter() {
  let runs = 0;
  const counting = [
    implement(GreeterFunction, {
      ...greeter,
      greet: (req, ctx) => {
        runs++;
        return greeter.greet(req, ctx);
      },
    }),
  ];
  return { counting, runs: () => runs };
}

describe("idempotency keys", () => {
  it("give a retry the first reply, also after a restart, without running the handler again", async () => {
    const { counting, runs } = countingGreeter();
    let node = await boot(counting);
    const first = await node.client(GreeterFunction).greet({ name: "ada" }, { idempotencyKey: "k1" });
    expect(await node.client(GreeterFunction).greet({ name: "ada" }, { idempotencyKey: "k1" })).toEqual(first);
    await stop();
    node = await boot(counting);
    expect(await node.client(GreeterFunction).greet({ name: "ada" }, { idempotencyKey: "k1" })).toEqual(first);
    expect(runs()).toBe(1);
    expect(node.runtime.stateOf(GreeterFunction, "ada")?.times).toBe(1);
  });

  it("reject the same key with a different request, naming the key", async () => {
    let node = await boot([implement(AccountFunction, account)]);
    await node.client(AccountFunction).deposit({ account: "a", amount: 5n }, { idempotencyKey: "d1" });
    await stop();
    node = await boot([implement(AccountFunction, account)]);
    const err = (await node
      .client(AccountFunction)
      .deposit({ account: "a", amount: 7n }, { idempotencyKey: "d1" })
      .catch((e) => ConnectError.from(e))) as ConnectError;
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toBe('idempotency key "d1" was used before with a different request to bank.v1.Account.Deposit');
    expect(node.runtime.stateOf(AccountFunction, "a")?.balance).toBe(5n);
  });

  it("expire after the retention", async () => {
    const { counting, runs } = countingGreeter();
    const node = await boot(counting);
    await node.client(GreeterFunction).greet({ name: "dee" }, { idempotencyKey: "k3" });
    await clock.advance(23 * 3600_000);
    await node.client(GreeterFunction).greet({ name: "dee" }, { idempotencyKey: "k3" });
    expect(runs()).toBe(1);
    await clock.advance(2 * 3600_000);
    await node.client(GreeterFunction).greet({ name: "dee" }, { idempotencyKey: "k3" });
    expect(runs()).toBe(2);
  });
});

describe("call memos", () => {
  // A transfer that calls Deposit at the other account, then waits for the
  // test to let it finish: the test restarts the node while it waits, so the
  // callee has committed and the caller has not.
  let release: () => void = () => {};
  let hold = true;
  let deposits = 0;
  let rerunTarget: ((to: string) => string) | undefined;
  let rerunAmount: ((amount: bigint) => bigint) | undefined;
  const bank = () => [
    implement(AccountFunction, {
      ...account,
      deposit: (req, ctx) => {
        deposits++;
        return account.deposit(req, ctx);
      },
      async transfer(req, ctx) {
        ctx.state.balance -= req.amount;
        const to = rerunTarget?.(req.to) ?? req.to;
        const amount = rerunAmount?.(req.amount) ?? req.amount;
        await ctx.call(AccountFunction).deposit({ account: to, amount, transferId: req.transferId });
        if (hold) await new Promise<void>((resolve) => (release = resolve));
        return { transferId: req.transferId, balance: ctx.state.balance };
      },
    }),
  ];

  beforeEach(() => {
    hold = true;
    deposits = 0;
    rerunTarget = undefined;
    rerunAmount = undefined;
  });

  const transferT1 = { account: "alice", to: "bob", amount: 30n, transferId: "t1" };
  /** The client's retry of t1: it gets the re-run's reply. */
  const retryT1 = (node: Awaited<ReturnType<typeof boot>>) =>
    node
      .client(AccountFunction)
      .transfer(transferT1, { idempotencyKey: "t1" })
      .catch((e) => ConnectError.from(e));

  async function crashMidTransfer() {
    const node = await boot(bank());
    await node.client(AccountFunction).deposit({ account: "alice", amount: 100n });
    deposits = 0;
    const pending = node
      .client(AccountFunction)
      .transfer(transferT1, { idempotencyKey: "t1" })
      .catch((e) => e);
    await expect.poll(() => node.runtime.stateOf(AccountFunction, "bob")?.balance).toBe(30n);
    expect(deposits).toBe(1);
    await stop();
    release();
    await pending;
    hold = false;
  }

  it("let a handler re-run after a crash get the callee's reply without running the callee twice", async () => {
    await crashMidTransfer();
    const node = await boot(bank());
    expect(await retryT1(node)).toMatchObject({ transferId: "t1", balance: 70n });
    expect(node.runtime.stateOf(AccountFunction, "alice")?.balance).toBe(70n);
    expect(node.runtime.stateOf(AccountFunction, "bob")?.balance).toBe(30n);
    expect(deposits).toBe(1);
  });

  it("fail a re-run that calls another target under the same id", async () => {
    await crashMidTransfer();
    rerunTarget = () => "carol";
    const node = await boot(bank());
    const err = (await retryT1(node)) as ConnectError;
    expect(err.code).toBe(Code.Internal);
    expect(err.rawMessage).toMatch(
      /^bank\.v1\.Account\/alice: call k-\S+\/0 was bank\.v1\.Account\/bob\.Deposit with a different request before, now bank\.v1\.Account\/carol\.Deposit; handlers that await calls must make the same calls in the same order when re-run$/,
    );
    expect(node.runtime.stateOf(AccountFunction, "carol")).toBeUndefined();
    expect(node.runtime.stateOf(AccountFunction, "alice")?.balance).toBe(100n);
    expect(deposits).toBe(1);
  });

  it("fail a re-run that calls with another request under the same id", async () => {
    await crashMidTransfer();
    rerunAmount = (a) => a + 1n;
    const node = await boot(bank());
    const err = (await retryT1(node)) as ConnectError;
    expect(err.code).toBe(Code.Internal);
    expect(err.rawMessage).toMatch(
      /call k-\S+\/0 was bank\.v1\.Account\/bob\.Deposit with a different request before, now bank\.v1\.Account\/bob\.Deposit/,
    );
    expect(node.runtime.stateOf(AccountFunction, "alice")?.balance).toBe(100n);
    expect(node.runtime.stateOf(AccountFunction, "bob")?.balance).toBe(30n);
    expect(deposits).toBe(1);
  });
});

describe("durable timers", () => {
  it("fire a delayed send once, after a restart", async () => {
    let node = await boot(shop.implementations);
    await node.client(InventoryFunction).restock({ sku: "socks", quantity: 5 });
    await node.client(CartFunction).addItem({ userId: "joe", sku: "socks", quantity: 1 });
    await stop();
    await clock.advance(abandonedAfterMs + 1000);
    node = await boot(shop.implementations);
    await settle();
    expect(egressed.filter((e) => e.egress === "stdout").map((e) => e.message)).toMatchObject([{ userId: "joe", items: { socks: 1 } }]);
    await stop();
    node = await boot(shop.implementations);
    await clock.advance(2 * abandonedAfterMs);
    await settle();
    expect(egressed.filter((e) => e.egress === "stdout")).toHaveLength(1);
    expect(node.runtime.stateOf(CartFunction, "joe")?.reminder).toBe("");
  });

  it("keep a cancellation across a restart", async () => {
    let node = await boot(shop.implementations);
    await node.client(InventoryFunction).restock({ sku: "socks", quantity: 5 });
    await node.client(CartFunction).addItem({ userId: "ann", sku: "socks", quantity: 1 });
    await node.client(CartFunction).checkout({ userId: "ann" });
    await stop();
    node = await boot(shop.implementations);
    await clock.advance(abandonedAfterMs * 2);
    await settle();
    expect(egressed.filter((e) => e.egress === "stdout")).toEqual([]);
    expect(egressed.filter((e) => e.egress === "orders")).toHaveLength(1);
  });

  it("expire state after its TTL, also when the node was down at the time", async () => {
    let node = await boot(shop.implementations);
    await node.client(InventoryFunction).restock({ sku: "socks", quantity: 5 });
    await node.client(CartFunction).addItem({ userId: "zed", sku: "socks", quantity: 1 });
    // The abandoned-cart reminder writes the state a day later: the TTL counts from there.
    await clock.advance(2 * day);
    await settle();
    expect(node.runtime.stateOf(CartFunction, "zed")?.reminder).toBe("");
    await stop();
    await clock.advance(30 * day);
    node = await boot(shop.implementations);
    await settle();
    expect(node.runtime.stateOf(CartFunction, "zed")).toBeUndefined();
    expect(node.runtime.stateOf(InventoryFunction, "socks")?.available).toBe(4);
  });
});

describe("the store", () => {
  it("gives a restarted node the state of every instance, also of those no longer held in memory", async () => {
    // A cache of 2 instances: most greetings read their instance back from the store.
    let node = await boot([implement(GreeterFunction, greeter)], { instanceCacheSize: 2 });
    for (let i = 0; i < 40; i++) await node.client(GreeterFunction).greet({ name: `n${i % 5}` });
    await settle();
    await stop();
    node = await boot([implement(GreeterFunction, greeter)], { instanceCacheSize: 2 });
    for (let i = 0; i < 5; i++) expect(node.runtime.stateOf(GreeterFunction, `n${i}`)?.times).toBe(8);
    expect(await node.client(GreeterFunction).greet({ name: "n0" })).toMatchObject({ times: 9 });
  });
});
