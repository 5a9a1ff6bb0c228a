// The runtime's contracts (DESIGN §7) on the in-process test env: call
// cycles fail fast, exclusive handlers run in arrival order, shared handlers
// run while the instance is locked, and nothing leaves a shard before its
// commit is durable.
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createMemoryStorage, createRuntime, type Egress, listen, type ShardStorage } from "@shoal/runtime";
import { createFunctionClient, implement } from "@shoal/sdk";
import { createTestEnv } from "@shoal/testing";
import { describe, expect, it } from "vitest";
import { account } from "../examples/bank/src/account.js";
import { AccountFunction } from "../examples/bank/src/gen/bank/v1/account_shoal.js";
import { GreeterFunction } from "../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { greeter } from "../examples/greeter/src/greeter.js";
import { FraudFunction } from "../examples/shopping-cart/src/gen/shop/v1/fraud_shoal.js";
import { InventoryFunction } from "../examples/shopping-cart/src/gen/shop/v1/inventory_shoal.js";
import { inventory } from "../examples/shopping-cart/src/inventory.js";

const deposit = (accountName: string, amount: bigint, transferId = "") => ({ account: accountName, amount, transferId });

describe("call cycles", () => {
  it("fail at once with FailedPrecondition naming the cycle (A -> B -> A)", async () => {
    const env = await createTestEnv({
      functions: [
        implement(AccountFunction, {
          ...account,
          async deposit(req, ctx) {
            // b's deposit calls back into a, which is locked awaiting b.
            if (ctx.key === "b") await ctx.call(AccountFunction).deposit(deposit("a", 1n));
            return account.deposit(req, ctx);
          },
        }),
      ],
    });
    try {
      const client = env.client(AccountFunction);
      await client.deposit(deposit("a", 100n));
      const err = (await client
        .transfer({ account: "a", to: "b", amount: 10n, transferId: "t" })
        .catch((e) => ConnectError.from(e))) as ConnectError;
      expect(err.code).toBe(Code.FailedPrecondition);
      expect(err.rawMessage).toBe(
        "call cycle: bank.v1.Account/a -> bank.v1.Account/b -> bank.v1.Account/a (the instance is locked awaiting this call)",
      );
      expect(env.stateOf(AccountFunction, "a")?.balance).toBe(100n);
      expect(env.stateOf(AccountFunction, "b")).toBeUndefined();
    } finally {
      await env.close();
    }
  });

  it("fail at once when two chains would wait for each other (a -> b while b -> a)", async () => {
    let started = 0;
    let bothStarted: () => void = () => {};
    const gate = new Promise<void>((resolve) => (bothStarted = resolve));
    const env = await createTestEnv({
      functions: [
        implement(AccountFunction, {
          ...account,
          async transfer(req, ctx) {
            if (++started === 2) bothStarted();
            await gate;
            return account.transfer(req, ctx);
          },
        }),
      ],
    });
    try {
      const client = env.client(AccountFunction);
      await client.deposit(deposit("a", 100n));
      await client.deposit(deposit("b", 100n));
      const results = await Promise.all([
        client.transfer({ account: "a", to: "b", amount: 10n, transferId: "ab" }).catch((e) => ConnectError.from(e)),
        client.transfer({ account: "b", to: "a", amount: 20n, transferId: "ba" }).catch((e) => ConnectError.from(e)),
      ]);
      const failures = results.filter((r) => r instanceof ConnectError);
      expect(failures).toHaveLength(1);
      expect(failures[0]?.code).toBe(Code.FailedPrecondition);
      expect(failures[0]?.rawMessage).toMatch(
        /^call cycle: bank\.v1\.Account\/(a|b) -> bank\.v1\.Account\/(a|b) -> bank\.v1\.Account\/(a|b) \(each instance is locked awaiting the next\)$/,
      );
      const a = env.stateOf(AccountFunction, "a")?.balance ?? 0n;
      const b = env.stateOf(AccountFunction, "b")?.balance ?? 0n;
      expect(a + b).toBe(200n);
      expect([a, b]).not.toEqual([100n, 100n]);
    } finally {
      await env.close();
    }
  });
});

describe("calls", () => {
  it("a handler awaiting calls in parallel runs again once all their replies are in, whatever order they arrive in", async () => {
    let runs = 0;
    const env = await createTestEnv({
      functions: [
        implement(AccountFunction, {
          ...account,
          async transfer(req, ctx) {
            runs++;
            // Split between two accounts at once; each deposit commits on its own shard.
            const half = req.amount / 2n;
            const [first, second] = await Promise.all(
              ["x", "y"].map((to) => ctx.call(AccountFunction).deposit(deposit(`${req.to}-${to}`, half, req.transferId))),
            );
            ctx.state.balance -= req.amount;
            return { transferId: req.transferId, balance: (first?.balance ?? 0n) + (second?.balance ?? 0n) };
          },
        }),
      ],
    });
    try {
      const client = env.client(AccountFunction);
      await client.deposit(deposit("p", 100n));
      expect(await client.transfer({ account: "p", to: "q", amount: 40n, transferId: "split" })).toMatchObject({ balance: 40n });
      expect(env.stateOf(AccountFunction, "p")?.balance).toBe(60n);
      expect(env.stateOf(AccountFunction, "q-x")?.balance).toBe(20n);
      expect(env.stateOf(AccountFunction, "q-y")?.balance).toBe(20n);
      // Suspended on both calls once, run again with both replies: two runs, not one per call.
      expect(runs).toBe(2);
    } finally {
      await env.close();
    }
  });
});

describe("ordering and concurrency", () => {
  it("runs exclusive handlers of one instance one at a time, in arrival order", async () => {
    const env = await createTestEnv({ functions: [implement(AccountFunction, account)] });
    try {
      const client = env.client(AccountFunction);
      for (let i = 0; i < 30; i++) await client.send.deposit(deposit("o", 1n, `d${i}`));
      await env.settled();
      expect(env.stateOf(AccountFunction, "o")?.ledger.map((e) => e.transferId)).toEqual(Array.from({ length: 30 }, (_, i) => `d${i}`));
    } finally {
      await env.close();
    }
  });

  it("runs shared handlers while the instance is locked, on the last committed state", async () => {
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    const env = await createTestEnv({
      functions: [
        implement(AccountFunction, {
          ...account,
          async withdraw(req, ctx) {
            const reply = account.withdraw(req, ctx);
            await held;
            return reply;
          },
        }),
      ],
    });
    try {
      const client = env.client(AccountFunction);
      await client.deposit(deposit("s", 50n));
      const withdrawing = client.withdraw({ account: "s", amount: 20n });
      // The exclusive withdraw holds the lock; the shared Get still answers, with the committed 50.
      expect(await client.get({ account: "s" })).toMatchObject({ balance: 50n });
      release();
      expect(await withdrawing).toMatchObject({ balance: 30n });
      expect(await client.get({ account: "s" })).toMatchObject({ balance: 30n });
    } finally {
      await env.close();
    }
  });
});

/** The memory store, but a group becomes durable only when the test says so. */
function gatedStorage(): { storage: ShardStorage; open(): void; close(): void } {
  const inner = createMemoryStorage();
  let gate: Promise<void> = Promise.resolve();
  let openGate: () => void = () => {};
  return {
    open: () => openGate(),
    close() {
      gate = new Promise<void>((resolve) => (openGate = resolve));
    },
    storage: {
      name: "gated",
      close: () => inner.close(),
      async openShard(shard, owner) {
        const store = await inner.openShard(shard, owner);
        return {
          ...store,
          write(changes, records) {
            const result = store.write(changes, records);
            const waitFor = gate;
            return { sequence: result.sequence, durable: result.durable.then(() => waitFor) };
          },
        };
      },
    },
  };
}

it("releases replies and egress only once the commit holding them is durable", async () => {
  const gated = gatedStorage();
  const emitted: string[] = [];
  const egress: Egress = {
    async deliver(m) {
      emitted.push(m.egress);
    },
  };
  const runtime = createRuntime({
    functions: [
      implement(GreeterFunction, {
        ...greeter,
        greet(req, ctx) {
          ctx.egress("audit", AccountFunction.service.method.get.output, { balance: 1n });
          return greeter.greet(req, ctx);
        },
      }),
    ],
    storage: gated.storage,
    shards: 2,
    logger: "silent",
    egress: { audit: egress },
  });
  await runtime.start();
  try {
    const client = createFunctionClient(GreeterFunction, createRouterTransport(runtime.routes));
    gated.close();
    let replied = false;
    const reply = client.greet({ name: "gated" }).then((r) => {
      replied = true;
      return r;
    });
    await expect.poll(() => runtime.stateOf(GreeterFunction, "gated")?.times).toBe(1);
    await new Promise((resolve) => setTimeout(resolve, 50));
    // The handler ran and its state is applied in memory, but nothing left the shard.
    expect(replied).toBe(false);
    expect(emitted).toEqual([]);
    gated.open();
    expect(await reply).toMatchObject({ times: 1 });
    await expect.poll(() => emitted).toEqual(["audit"]);
  } finally {
    gated.open();
    await runtime.close();
  }
});

it("fails an invocation that emits to an egress that is not configured, committing nothing", async () => {
  const runtime = createRuntime({
    functions: [
      implement(GreeterFunction, {
        ...greeter,
        greet(req, ctx) {
          ctx.egress("nowhere", AccountFunction.service.method.get.output, { balance: 1n });
          return greeter.greet(req, ctx);
        },
      }),
    ],
    storage: createMemoryStorage(),
    shards: 1,
    logger: "silent",
  });
  await runtime.start();
  try {
    const err = (await createFunctionClient(GreeterFunction, createRouterTransport(runtime.routes))
      .greet({ name: "e" })
      .catch((e) => ConnectError.from(e))) as ConnectError;
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(err.rawMessage).toBe('greeter.v1.Greeter.Greet: no egress named "nowhere" is configured (shoal.yaml egress)');
    expect(runtime.stateOf(GreeterFunction, "e")).toBeUndefined();
  } finally {
    await runtime.close();
  }
});

it("refuses a send or a call to an instance whose key is too long to store: the invocation fails, nothing commits, the shard serves on", async () => {
  const tooLong = "x".repeat(1500);
  const runtime = createRuntime({
    functions: [
      implement(GreeterFunction, {
        ...greeter,
        async greet(req, ctx) {
          if (req.name === "sender") ctx.send(GreeterFunction).greet({ name: tooLong });
          if (req.name === "caller") {
            const err = await ctx
              .call(GreeterFunction)
              .count({ name: tooLong })
              .catch((e: unknown) => e);
            return { greeting: String(err instanceof Error ? err.message : err), times: 0 };
          }
          return greeter.greet(req, ctx);
        },
      }),
    ],
    storage: createMemoryStorage(),
    shards: 1,
    logger: "silent",
  });
  await runtime.start();
  try {
    const client = createFunctionClient(GreeterFunction, createRouterTransport(runtime.routes));
    const err = (await client.greet({ name: "sender" }).catch((e) => ConnectError.from(e))) as ConnectError;
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toBe(
      `greeter.v1.Greeter.Greet: ctx.send: the key of greeter.v1.Greeter instance "${"x".repeat(40)}…" is 1500 bytes (UTF-8); greeter.v1.Greeter keys may be at most 984 bytes`,
    );
    expect(runtime.stateOf(GreeterFunction, "sender")).toBeUndefined();
    // The call gets the refusal as its answer; the handler decides (here: it says so).
    expect((await client.greet({ name: "caller" })).greeting).toContain("ctx.call: the key of greeter.v1.Greeter instance");
    // From outside: refused before it is accepted, as InvalidArgument.
    const direct = (await client.greet({ name: tooLong }).catch((e) => ConnectError.from(e))) as ConnectError;
    expect(direct.code).toBe(Code.InvalidArgument);
    expect(direct.rawMessage).toContain("greeter.v1.Greeter keys may be at most 984 bytes");
    expect(await client.greet({ name: "after" })).toMatchObject({ times: 1 });
    expect(runtime.status().filter((s) => s.failed !== undefined)).toEqual([]);
  } finally {
    await runtime.close();
  }
});

it("bounds the handlers running at once across instances (maxConcurrentInvocations)", async () => {
  let running = 0;
  let peak = 0;
  const runtime = createRuntime({
    functions: [
      implement(GreeterFunction, {
        ...greeter,
        async greet(req, ctx) {
          running++;
          peak = Math.max(peak, running);
          await new Promise((resolve) => setTimeout(resolve, 5));
          running--;
          return greeter.greet(req, ctx);
        },
      }),
    ],
    storage: createMemoryStorage(),
    shards: 4,
    maxConcurrentInvocations: 3,
    logger: "silent",
  });
  await runtime.start();
  try {
    const client = createFunctionClient(GreeterFunction, createRouterTransport(runtime.routes));
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => client.greet({ name: `c${i}` })));
    expect(replies.every((r) => r.times === 1)).toBe(true);
    expect(peak).toBe(3);
  } finally {
    await runtime.close();
  }
});

it("lets requests in flight finish when the server closes", async () => {
  let handlerStarted: () => void = () => {};
  const started = new Promise<void>((resolve) => (handlerStarted = resolve));
  const runtime = createRuntime({
    functions: [
      implement(GreeterFunction, {
        ...greeter,
        async greet(req, ctx) {
          handlerStarted();
          await new Promise((resolve) => setTimeout(resolve, 200));
          return greeter.greet(req, ctx);
        },
      }),
    ],
    storage: createMemoryStorage(),
    shards: 1,
    logger: "silent",
  });
  await runtime.start();
  const server = await listen(runtime, { port: 0 });
  try {
    const client = createFunctionClient(GreeterFunction, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const inFlight = client.greet({ name: "late" });
    await started;
    const closing = server.close();
    expect(await inFlight).toMatchObject({ greeting: "Hello, late!", times: 1 });
    await closing;
    const refused = await client.greet({ name: "after" }).catch((e) => ConnectError.from(e));
    expect(refused).toBeInstanceOf(ConnectError); // connection refused: the port is closed
  } finally {
    await runtime.close();
  }
});

it("keeps no call journal once the calling invocation has committed", async () => {
  const env = await createTestEnv({ functions: [implement(AccountFunction, account)] });
  try {
    const client = env.client(AccountFunction);
    for (const name of ["a", "b", "c"]) await client.deposit(deposit(name, 1000n));
    await Promise.all(
      Array.from({ length: 60 }, (_, i) =>
        client
          .transfer({ account: ["a", "b", "c"][i % 3] as string, to: ["b", "c", "a"][i % 3] as string, amount: 1n, transferId: `t${i}` })
          .catch(() => undefined),
      ),
    );
    await env.settled();
    expect(env.runtime.status().reduce((sum, s) => sum + s.journals, 0)).toBe(0);
  } finally {
    await env.close();
  }
});

it("gives a stateless caller its call's result in its own shard, and keeps no journal after", async () => {
  const env = await createTestEnv({
    functions: [
      implement(InventoryFunction, inventory),
      implement(FraudFunction, {
        async check(req, ctx) {
          const stock = await ctx.call(InventoryFunction).level({ sku: "socks" });
          return { approved: req.totalQuantity <= stock.available, reason: `${stock.available} in stock` };
        },
      }),
    ],
    shards: 8,
  });
  try {
    await env.client(InventoryFunction).restock({ sku: "socks", quantity: 5 });
    const verdicts = await Promise.all(
      Array.from({ length: 20 }, (_, i) => env.client(FraudFunction).check({ userId: `u${i}`, totalQuantity: i })),
    );
    expect(verdicts.map((v) => v.approved)).toEqual(Array.from({ length: 20 }, (_, i) => i <= 5));
    await env.settled();
    expect(env.runtime.status().reduce((sum, s) => sum + s.journals, 0)).toBe(0);
  } finally {
    await env.close();
  }
});

it("ignores a cancellation token with a malformed escape, as any string that is not a token, and commits the invocation", async () => {
  const env = await createTestEnv({
    functions: [
      implement(GreeterFunction, {
        ...greeter,
        greet(req, ctx) {
          ctx.cancel("greeter.v1.Greeter|x|%E0%A4%A");
          return greeter.greet(req, ctx);
        },
      }),
    ],
  });
  try {
    expect(await env.client(GreeterFunction).greet({ name: "t" })).toMatchObject({ times: 1 });
    expect(env.stateOf(GreeterFunction, "t")?.times).toBe(1);
  } finally {
    await env.close();
  }
});
