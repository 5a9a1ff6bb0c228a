// DESIGN §7: an answer the runtime makes up about a call (a call cycle it
// assumed, "shutting down", "storage failed") is never committed as the
// call's result nor memoized as a client's reply; only the callee's own
// committed reply is final. Each test runs a bank transfer (withdraw here,
// deposit there with a call) into one of those conditions, then retries it
// with its Idempotency-Key and checks it is applied exactly once on both sides.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createLocalStorage, createMemoryStorage, createRuntime, listen, type ShardStorage } from "@shoal/runtime";
import { shardOf } from "@shoal/runtime/internal";
import { implement } from "@shoal/sdk";
import { afterEach, expect, it } from "vitest";
import { account } from "../examples/bank/src/account.js";
import { type AccountClient, AccountFunction, createAccountClient } from "../examples/bank/src/gen/bank/v1/account_shoal.js";
import { type Child, freePort, repoRoot, shoalBin, start } from "./support/processes.js";

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "shoal-made-up-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function bankClient(url: string): AccountClient {
  return createAccountClient(createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));
}

const errorOf = (err: unknown) => ConnectError.from(err);

/** Retries while the answer is retryable (Unavailable, connection errors); returns the first other answer. */
async function retried<T>(run: () => Promise<T>, attempts = 200): Promise<T | ConnectError> {
  let last: ConnectError | undefined;
  for (let i = 0; i < attempts; i++) {
    try {
      return await run();
    } catch (err) {
      last = errorOf(err);
      if (last.code !== Code.Unavailable && last.code !== Code.Unknown) return last;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return last as ConnectError;
}

/** Ledger entries of an account by transfer id, through the ingress. */
async function ledgerOf(client: AccountClient, name: string) {
  const view = await client.get({ account: name });
  const entries = new Map<string, bigint[]>();
  for (const e of view.ledger) entries.set(e.transferId, [...(entries.get(e.transferId) ?? []), e.amount]);
  return { balance: view.balance, entries };
}

const interruptedBank = `${repoRoot}test/support/interrupted-bank.ts`;

/** Runs `shoal dev` on the bank with test hooks (see interrupted-bank.ts). */
async function startHookedBank(phase: string, args: string[], env: Record<string, string> = {}): Promise<Child> {
  const child = start(process.execPath, [shoalBin, "dev", interruptedBank, ...args], { env: { SHOAL_TEST_PHASE: phase, ...env } });
  cleanups.push(() => {
    child.process.kill("SIGKILL");
  });
  await child.waitFor(/serving .* at http/);
  return child;
}

/**
 * Transfer t1 (from x to y, under key "t1") is started on a hooked bank that
 * holds it once its deposit returned; `beforeCall` runs once it started, before
 * its call leaves (phase "queue" only). The deposit commits, a later commit in
 * the same log makes it durable, and the runtime is SIGKILLed before t1
 * commits. Resolves once it is dead; t1's client got an error.
 */
async function killAfterDeposit(
  node: Child,
  client: AccountClient,
  t1: { account: string; to: string; amount: bigint; transferId: string },
  beforeCall?: () => Promise<void>,
): Promise<void> {
  const first = client.transfer(t1, { idempotencyKey: "t1" }).catch(errorOf);
  if (beforeCall !== undefined) {
    await node.waitFor(/t1 started/);
    await beforeCall();
  }
  await node.waitFor(/deposited t1/);
  await client.deposit({ account: "z", amount: 1n });
  node.process.kill("SIGKILL");
  await node.exited;
  expect(await first).toBeInstanceOf(ConnectError);
}

it("a transfer retried after a crash gets its deposit's committed reply from the store, not a made-up call cycle", {
  timeout: 60_000,
}, async () => {
  const port = await freePort();
  // One shard: the caller's shard is the callee's.
  const args = ["--port", String(port), "--data-dir", tempDir(), "--shards", "1", "--log-level", "error"];
  let node = await startHookedBank("hang", args);
  const client = bankClient(`http://127.0.0.1:${port}`);
  await client.deposit({ account: "x", amount: 100n }, { idempotencyKey: "seed-x" });
  await client.deposit({ account: "y", amount: 100n }, { idempotencyKey: "seed-y" });
  const t1 = { account: "x", to: "y", amount: 30n, transferId: "t1" };
  // 1. The deposit commits (and its reply is in t1's journal); 2. the runtime dies before the transfer commits.
  await killAfterDeposit(node, client, t1);

  // 3. After the restart the shard commits before the client retries.
  node = await startHookedBank("cycle", args);
  await client.deposit({ account: "z", amount: 1n });
  // 4. The retry runs while y is locked by t2, which awaits a deposit at x: asking y
  // again would close a wait-for cycle, but y has the reply already.
  const retry = client.transfer(t1, { idempotencyKey: "t1" }).catch(errorOf);
  await node.waitFor(/t1 waits for t2/);
  const t2 = client.transfer({ account: "y", to: "x", amount: 5n, transferId: "t2" }, { idempotencyKey: "t2" }).catch(errorOf);
  expect(await retry).toMatchObject({ transferId: "t1", balance: 70n });
  expect(await t2).toMatchObject({ transferId: "t2", balance: 125n });
  expect(await client.transfer(t1, { idempotencyKey: "t1" })).toMatchObject({ transferId: "t1", balance: 70n });

  const x = await ledgerOf(client, "x");
  const y = await ledgerOf(client, "y");
  expect(x.entries.get("t1")).toEqual([-30n]);
  expect(y.entries.get("t1")).toEqual([30n]);
  expect(x.entries.get("t2")).toEqual([5n]);
  expect(y.entries.get("t2")).toEqual([-5n]);
  expect([x.balance, y.balance]).toEqual([75n, 125n]);
});

it("an invocation whose call left before the node stopped is resumed from the log, with its call's reply", async () => {
  const dir = tempDir();
  let hang = true;
  let deposited: () => void = () => {};
  const depositDone = new Promise<void>((resolve) => (deposited = resolve));
  const functions = [
    implement(AccountFunction, {
      ...account,
      async transfer(req, ctx) {
        const result = await account.transfer(req, ctx);
        if (hang) {
          deposited();
          await new Promise<never>(() => {});
        }
        return result;
      },
    }),
  ];
  const boot = async () => {
    const storage = await createLocalStorage({ directory: dir });
    const runtime = createRuntime({ functions, storage, shards: 1, logger: "silent" });
    await runtime.start();
    const journals = () => runtime.status().reduce((n, s) => n + s.journals, 0);
    return { runtime, journals, client: createAccountClient(createRouterTransport(runtime.routes)) };
  };
  const t1 = { account: "x", to: "y", amount: 30n, transferId: "t1" };
  const before = await boot();
  await before.client.deposit({ account: "x", amount: 100n });
  const first = before.client.transfer(t1, { idempotencyKey: "t1" }).catch(errorOf);
  await depositDone;
  expect(before.journals()).toBe(1);
  await before.runtime.close();
  expect(await first).toMatchObject({ code: Code.Unavailable });

  hang = false;
  const after = await boot();
  cleanups.push(() => after.runtime.close());
  // The request was logged before its call left: recovery runs it again with the
  // deposit's reply from its journal, and its commit drops the journal.
  await after.client.deposit({ account: "z", amount: 1n });
  expect(await after.client.transfer(t1, { idempotencyKey: "t1" })).toMatchObject({ transferId: "t1", balance: 70n });
  expect(after.journals()).toBe(0);
  expect((await ledgerOf(after.client, "y")).entries.get("t1")).toEqual([30n]);
});

/** The memory store, where the first commit writing `key`'s state reaches the log but its durability fails. */
function storageFailingOnce(key: string): ShardStorage {
  const inner = createMemoryStorage();
  let armed = true;
  return {
    name: "failing-once",
    close: () => inner.close(),
    async openShard(shard, owner) {
      const store = await inner.openShard(shard, owner);
      // The memory store's handles are plain objects (their epoch a plain value): copying one delegates.
      return {
        ...store,
        write(changes, records) {
          const result = store.write(changes, records);
          const hit = records.some((r) => r.kind.case === "commit" && r.kind.value.stateWrites.some((w) => w.address?.key === key));
          if (!(armed && hit)) return result;
          armed = false;
          // Like a flush that fails after the write reached the disk: the write turns up on recovery.
          const durable = result.durable.then(() => {
            throw new Error(`injected: fsync failed for shard ${shard}`);
          });
          return { sequence: result.sequence, durable };
        },
      };
    },
  };
}

/** A bank whose `to` account's shard fails to make its first deposit durable; a funded `from` on another shard. */
async function bankWithFailingReceiver(maxAttempts: number) {
  const shards = 4;
  const from = "from";
  const shardOfAccount = (k: string) => shardOf(AccountFunction.typeName, k, shards);
  const to = ["to-1", "to-2", "to-3", "to-4", "to-5"].find((k) => shardOfAccount(k) !== shardOfAccount(from));
  if (to === undefined) throw new Error("no account on another shard than the sender's");
  const runtime = createRuntime({
    functions: [implement(AccountFunction, account)],
    storage: storageFailingOnce(to),
    shards,
    logger: "silent",
    retry: { maxAttempts, initialDelayMs: 100 },
  });
  await runtime.start();
  const server = await listen(runtime, { host: "127.0.0.1", port: 0 });
  cleanups.push(async () => {
    await server.close();
    await runtime.close();
  });
  const client = bankClient(server.url);
  await client.deposit({ account: from, amount: 100n }, { idempotencyKey: "seed" });
  const transfer = { account: from, to, amount: 30n, transferId: "t" };
  const appliedOnce = async () => {
    const sender = await ledgerOf(client, from);
    const receiver = await ledgerOf(client, to);
    expect(sender.entries.get("t")).toEqual([-30n]);
    expect(receiver.entries.get("t")).toEqual([30n]);
    expect([sender.balance, receiver.balance]).toEqual([70n, 30n]);
  };
  return { client, transfer, appliedOnce };
}

it("storage failure at the callee's shard: the suspended caller commits nothing until the callee's reply arrives, once its shard recovers", async () => {
  // One attempt: a caller never retries to learn a call's reply; it arrives through the caller's journal.
  const { client, transfer, appliedOnce } = await bankWithFailingReceiver(1);

  // The deposit's commit reached the log but its durability failed: the reply is known only once the shard
  // recovers and finds that commit, and the transfer answers with it.
  expect(await client.transfer(transfer, { idempotencyKey: "t" })).toMatchObject({ transferId: "t", balance: 70n });
  await appliedOnce();
});

it("storage failure at the callee's shard: the caller asks again and answers with the callee's reply", async () => {
  // 100 + 200 + ... ms between attempts: the shard recovers (from 200 ms on) before they run out.
  const { client, transfer, appliedOnce } = await bankWithFailingReceiver(8);
  expect(await client.transfer(transfer, { idempotencyKey: "t" })).toMatchObject({ transferId: "t", balance: 70n });
  await appliedOnce();
});

it("SIGTERM while transfers await their deposits: nothing is committed for them, and their retries apply each once", {
  timeout: 60_000,
}, async () => {
  const shards = 4;
  // Senders on one shard, receivers on the others.
  const names = Array.from({ length: 200 }, (_, i) => `acct-${i}`);
  const callerShard = shardOf(AccountFunction.typeName, "acct-0", shards);
  const local = names.filter((k) => shardOf(AccountFunction.typeName, k, shards) === callerShard);
  const remote = names.filter((k) => shardOf(AccountFunction.typeName, k, shards) !== callerShard);
  const pinger = local[6] as string;
  const transfers = local
    .slice(0, 6)
    .map((from, i) => ({ account: from, to: remote[i] as string, amount: BigInt(10 + i), transferId: `held-${i}` }));
  const port = await freePort();
  const args = ["--port", String(port), "--data-dir", tempDir(), "--shards", String(shards), "--log-level", "error"];
  const node = await startHookedBank("sigterm", args);
  const client = bankClient(`http://127.0.0.1:${port}`);
  for (const t of transfers) await client.deposit({ account: t.account, amount: 100n }, { idempotencyKey: `seed-${t.account}` });
  // The client gives up on them, so the server has no request to wait for when it stops.
  const first = transfers.map((t) => client.transfer(t, { idempotencyKey: t.transferId, timeoutMs: 2_000 }).catch(errorOf));
  for (const t of transfers) await node.waitFor(new RegExp(`holding ${t.transferId}\\b`));
  for (const answer of await Promise.all(first)) expect(answer).toBeInstanceOf(ConnectError);

  // An egress delivery the senders' shard records as it closes keeps it open a moment
  // after the receivers' shards, which answer the calls they hold as they close.
  await client.deposit({ account: pinger, amount: 1n, transferId: "ping" });
  await node.waitFor(/"egress":"stdout"/);
  node.process.kill("SIGTERM");
  expect(await node.exited).toBe(0);

  await startHookedBank("", args);
  for (const t of transfers) {
    expect(await retried(() => client.transfer(t, { idempotencyKey: t.transferId }))).toMatchObject({
      transferId: t.transferId,
      balance: 100n - t.amount,
    });
  }
  for (const t of transfers) {
    expect((await ledgerOf(client, t.account)).entries.get(t.transferId)).toEqual([-t.amount]);
    expect((await ledgerOf(client, t.to)).entries.get(t.transferId)).toEqual([t.amount]);
  }
});

// A request is held in memory until its commit, but once its call has left
// and the callee committed, the invocation must survive a crash as it was:
// re-run first on its instance, on the state it saw. Otherwise a later
// message moves the state on and the re-run decides otherwise (here: refuses
// the transfer for a balance another one lowered) while its deposit stays.
it("a transfer whose deposit committed before a crash runs again before later transfers from its account", {
  timeout: 60_000,
}, async () => {
  const port = await freePort();
  const args = ["--port", String(port), "--data-dir", tempDir(), "--shards", "1", "--log-level", "error"];
  let node = await startHookedBank("hang", args);
  const client = bankClient(`http://127.0.0.1:${port}`);
  await client.deposit({ account: "x", amount: 40n }, { idempotencyKey: "seed-x" });
  const t1 = { account: "x", to: "y", amount: 35n, transferId: "t1" };
  await killAfterDeposit(node, client, t1);

  node = await startHookedBank("", args);
  // Another transfer from x reaches the node before t1's retry does.
  const t2 = await retried(() => client.transfer({ account: "x", to: "w", amount: 10n, transferId: "t2" }, { idempotencyKey: "t2" }));
  expect(await retried(() => client.transfer(t1, { idempotencyKey: "t1" }))).toMatchObject({ transferId: "t1", balance: 5n });
  expect(t2).toMatchObject({ code: Code.FailedPrecondition, rawMessage: "balance 5 is below 10" });
  const x = await ledgerOf(client, "x");
  const y = await ledgerOf(client, "y");
  expect(x.entries.get("t1")).toEqual([-35n]);
  expect(y.entries.get("t1")).toEqual([35n]);
  expect([x.balance, y.balance]).toEqual([5n, 35n]);
});

it("after a crash, a transfer whose deposit committed runs again before a message logged behind it", {
  timeout: 60_000,
}, async () => {
  const port = await freePort();
  const gate = join(tempDir(), "gate");
  const args = ["--port", String(port), "--data-dir", tempDir(), "--shards", "1", "--log-level", "error"];
  let node = await startHookedBank("queue", args, { SHOAL_TEST_GATE: gate });
  const client = bankClient(`http://127.0.0.1:${port}`);
  await client.deposit({ account: "x", amount: 40n }, { idempotencyKey: "seed-x" });
  const t1 = { account: "x", to: "y", amount: 35n, transferId: "t1" };
  await killAfterDeposit(node, client, t1, async () => {
    // Logged (and so durable) before t1's call leaves, queued behind t1 on x.
    await client.send.withdraw({ account: "x", amount: 10n });
    writeFileSync(gate, "");
  });

  node = await startHookedBank("", args);
  expect(await retried(() => client.transfer(t1, { idempotencyKey: "t1" }))).toMatchObject({ transferId: "t1", balance: 5n });
  const x = await ledgerOf(client, "x");
  const y = await ledgerOf(client, "y");
  expect(x.entries.get("t1")).toEqual([-35n]);
  expect(y.entries.get("t1")).toEqual([35n]);
  // The withdrawal ran after t1 and found 5, below its 10.
  expect([x.balance, y.balance]).toEqual([5n, 35n]);
});
