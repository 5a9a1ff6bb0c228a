// The shard processor driven by a scripted invoker on the memory store: what
// it does with each answer an invoker can give (effects, a suspension, a
// throw, no answer, effects for another instance).
import { create, type Message, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { implement, type Logger } from "@shoal/sdk";
import { CallResultInputSchema, type Envelope, EnvelopeSchema, okReply, type Reply } from "@shoal/sdk/internal";
import { afterEach, describe, expect, it } from "vitest";
import { account } from "../../../../examples/bank/src/account.js";
import { AccountStateSchema, DepositRequestSchema } from "../../../../examples/bank/src/gen/bank/v1/account_pb.js";
import { AccountFunction } from "../../../../examples/bank/src/gen/bank/v1/account_shoal.js";
import { CallCycles } from "../invoker/call-cycles.js";
import type { InvokeRequest, InvokeResponse, Invoker } from "../invoker/invoker.js";
import { createRuntimeMetrics } from "../observe/metrics.js";
import { createMemoryStorage } from "../storage/memory/memory-storage.js";
import { systemClock } from "./clock.js";
import { createSemaphore } from "./semaphore.js";
import { type ShardHost, ShardProcessor, ShardUnavailableError } from "./shard-processor.js";

const type = AccountFunction.typeName;
const registered = { fn: AccountFunction, handlers: implement(AccountFunction, account).handlers };
const closers: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const close of closers.splice(0)) await close();
});

/** One shard on the memory store whose handlers `script` runs; `delivered` holds what it sent to other shards. */
async function shardWith(
  script: (request: InvokeRequest, n: number) => Promise<InvokeResponse>,
  options: { invokeTimeoutMs?: number } = {},
) {
  const requests: InvokeRequest[] = [];
  const invoker: Invoker = {
    invoke(request) {
      requests.push(request);
      return script(request, requests.length);
    },
  };
  const delivered: Envelope[] = [];
  let onDelivery: () => void = () => {};
  const errors: string[] = [];
  const logger: Logger = { debug() {}, info() {}, warn() {}, error: (message) => errors.push(message) };
  const metrics = createRuntimeMetrics({ shardStats: () => [], storageStats: () => undefined });
  const storage = createMemoryStorage();
  let processor: ShardProcessor | undefined;
  const host: ShardHost = {
    nodeId: "node-1",
    clock: systemClock,
    shards: 1,
    slots: createSemaphore(8),
    retry: { maxAttempts: 3, initialDelayMs: 1, maxDelayMs: 1 },
    memoRetentionMs: 60_000,
    snapshotEvery: 10_000,
    snapshotLogBytes: 1 << 30,
    snapshotAfterMs: 3_600_000,
    logBytesWritten: () => 0,
    logger,
    metrics,
    callCycles: new CallCycles(),
    invoker,
    invokeTimeoutMs: options.invokeTimeoutMs ?? 60_000,
    invocationLogger: () => logger,
    lookup: (name) => (name === type ? registered : undefined),
    shardOf: () => 0,
    call: () => Promise.reject(new Error("calls travel as messages (deliver)")),
    heldCall: (envelope) => {
      if (processor === undefined) throw new ShardUnavailableError("not open");
      return processor.heldCall(envelope);
    },
    async deliver(envelope) {
      delivered.push(envelope);
      onDelivery();
    },
    hasEgress: () => false,
    emitEgress: async () => {},
    storageFailed: () => {},
    reply: (address, outcome) => {
      const waiter = replyWaiters.get(address.request);
      replyWaiters.delete(address.request);
      waiter?.(outcome);
    },
    shardMoved: () => {},
  };
  const log = await storage.openShard(0, host.nodeId);
  const shard = new ShardProcessor(0, log, host);
  processor = shard;
  await shard.recover();
  shard.start();
  closers.push(async () => {
    await shard.close();
    await storage.close();
  });
  return {
    shard,
    requests,
    delivered,
    errors,
    metrics,
    /** Resolves once `n` envelopes were delivered in all. */
    deliveries: (n: number) =>
      new Promise<void>((resolve) => {
        const check = () => {
          if (delivered.length >= n) resolve();
        };
        onDelivery = check;
        check();
      }),
  };
}

/** This test node's reply channel: request id -> what its reply resolves. */
const replyWaiters = new Map<string, (outcome: Reply | ShardUnavailableError) => void>();

/** Submits `envelope` with this node's reply address; resolves with its reply. */
function ask(shard: ShardProcessor, envelope: Envelope, decoded?: Message): Promise<Reply | ShardUnavailableError> {
  const request = `r-${envelope.id}`;
  return new Promise((resolve) => {
    replyWaiters.set(request, resolve);
    void shard.submit(envelope, { node: "node-1", request }, decoded);
  });
}

/** An ingress request to account `key`; resolves with its reply. */
function request(shard: ShardProcessor, id: string, key: string, handler = "Deposit"): Promise<Reply | ShardUnavailableError> {
  const envelope = create(EnvelopeSchema, {
    id,
    target: { type, key },
    handler,
    payload: new Uint8Array([1]),
    replyTo: { kind: { case: "ingress", value: { node: "node-1", request: id } } },
  });
  return ask(shard, envelope);
}

/** The callee's `$result` for `call`, as its outbox would deliver it. */
function resultOf(call: Envelope, reply: Reply, sequence: bigint): Envelope {
  const value = call.replyTo?.kind.case === "call" ? call.replyTo.kind.value : undefined;
  const input = create(CallResultInputSchema, {
    invocationId: value?.invocationId,
    result: { callId: call.callId, target: call.target, handler: call.handler, reply },
  });
  return create(EnvelopeSchema, {
    id: `${call.id}:result`,
    target: value?.caller,
    handler: "$result",
    payload: toBinary(CallResultInputSchema, input),
    source: { shard: 7, sequence },
  });
}

const balance = (amount: bigint) => toBinary(AccountStateSchema, create(AccountStateSchema, { balance: amount }));
const noEffects = { state: { kind: "keep" }, sends: [], cancels: [], egress: [] } as const;
const done = (request: InvokeRequest, amount: bigint): InvokeResponse => ({
  address: request.address,
  outcomes: [
    { status: "done", reply: okReply(new Uint8Array()), effects: { ...noEffects, state: { kind: "write", bytes: balance(amount) } } },
  ],
});

describe("ShardProcessor with a scripted invoker", () => {
  it("sends the calls of a suspended invocation as messages, keeps its instance locked, and runs it again once their results are in its journal", async () => {
    const t = await shardWith(async (req) => {
      const message = req.messages[0];
      if (message === undefined) throw new Error("no message");
      if (message.envelope.id === "first" && message.journal.length === 0) {
        return {
          address: req.address,
          outcomes: [
            {
              status: "suspended",
              calls: [{ callId: "first/0", target: { type, key: "b" }, handler: "Deposit", payload: new Uint8Array([2]) }],
            },
          ],
        };
      }
      return done(req, message.envelope.id === "first" ? 10n : 20n);
    });
    const first = request(t.shard, "first", "a");
    await t.deliveries(1);
    const call = t.delivered[0] as Envelope;
    expect(call).toMatchObject({ id: "first/0", callId: "first/0", target: { type, key: "b" }, handler: "Deposit" });
    expect(call.replyTo?.kind).toMatchObject({ case: "call", value: { invocationId: "first", shard: 0 } });
    // Queued behind the suspended invocation: the instance stays locked until it finishes.
    const second = request(t.shard, "second", "a");
    // Past the microtasks that follow the delivery: the invocation now awaits its result.
    await new Promise((resolve) => setImmediate(resolve));
    expect(t.requests.map((r) => r.messages[0]?.envelope.id)).toEqual(["first"]);

    await t.shard.submitCallResult(resultOf(call, okReply(new Uint8Array([3])), 1n));
    expect(await first).toMatchObject({ result: { case: "ok" } });
    expect(await second).toMatchObject({ result: { case: "ok" } });
    expect(t.requests.map((r) => [r.messages[0]?.envelope.id, r.messages[0]?.journal.map((j) => j.callId)])).toEqual([
      ["first", []],
      ["first", ["first/0"]],
      ["second", []],
    ]);
    // The second ran on the state the first committed.
    expect(t.requests[2]?.state).toEqual(balance(10n));
    expect(t.shard.stateOf(type, "a")).toEqual(balance(20n));
    expect(t.shard.stats().journals).toBe(0);
  });

  it("retries an invoker that throws, then answers Internal and dead-letters the message", async () => {
    const t = await shardWith(async () => {
      throw new Error("boom");
    });
    const reply = await request(t.shard, "m", "a");
    expect(reply).toMatchObject({
      result: { case: "error", value: { code: Code.Internal, message: "bank.v1.Account.Deposit failed after 3 attempts: boom" } },
    });
    expect(t.requests).toHaveLength(3);
    expect(t.shard.deadLetters().map((d) => d.envelopeId)).toEqual(["m"]);
    expect(t.shard.stateOf(type, "a")).toBeUndefined();
  });

  it("abandons an invocation the invoker does not answer within invokeTimeoutMs, and retries it", async () => {
    const t = await shardWith((req, n) => (n === 1 ? new Promise<never>(() => {}) : Promise.resolve(done(req, 5n))), {
      invokeTimeoutMs: 50,
    });
    expect(await request(t.shard, "m", "a")).toMatchObject({ result: { case: "ok" } });
    expect(t.requests).toHaveLength(2);
    expect(t.shard.stateOf(type, "a")).toEqual(balance(5n));
  });

  it("answers Internal naming the timeout when the invoker never answers", async () => {
    const t = await shardWith(() => new Promise<never>(() => {}), { invokeTimeoutMs: 20 });
    const reply = await request(t.shard, "m", "a");
    expect(reply).toMatchObject({ result: { case: "error", value: { code: Code.Internal } } });
    expect((reply as Reply).result.value).toMatchObject({
      message: expect.stringContaining("the invoker did not answer within 20 ms (invokeTimeoutMs)"),
    });
    expect(t.requests).toHaveLength(3);
  });

  it("gives an invoker that does not run in this process the request as bytes, also when the ingress passed it decoded", async () => {
    const t = await shardWith(async (req) => done(req, 1n));
    const decoded = create(DepositRequestSchema, { account: "a", amount: 7n });
    const envelope = create(EnvelopeSchema, {
      id: "m",
      target: { type, key: "a" },
      handler: "Deposit",
      replyTo: { kind: { case: "ingress", value: { node: "node-1", request: "m" } } },
    });
    const reply = ask(t.shard, envelope, decoded);
    expect(await reply).toMatchObject({ result: { case: "ok" } });
    const message = t.requests[0]?.messages[0];
    expect(message?.decoded).toBeUndefined();
    expect(message?.envelope.payload).toEqual(toBinary(DepositRequestSchema, decoded));
  });

  it("refuses effects for another instance: nothing of them commits, the refusal is logged and counted", async () => {
    const t = await shardWith(async (req) => ({ ...done(req, 99n), address: { type, key: "other" } }));
    const reply = await request(t.shard, "m", "a");
    const refused =
      'bank.v1.Account.Deposit (key "a"): the invoker answered for instance bank.v1.Account/other, not bank.v1.Account/a; its effects are refused (a bug in the invoker: it must answer for the instance it was given)';
    expect(reply).toMatchObject({
      result: { case: "error", value: { code: Code.Internal, message: `bank.v1.Account.Deposit failed after 3 attempts: ${refused}` } },
    });
    expect(t.shard.stateOf(type, "a")).toBeUndefined();
    expect(t.shard.stateOf(type, "other")).toBeUndefined();
    expect(t.errors.filter((e) => e === refused)).toHaveLength(3);
    const counted = await t.metrics.registry.getSingleMetric("shoal_invoker_refusals_total")?.get();
    expect(counted?.values).toEqual([{ labels: { function: type, handler: "Deposit" }, value: 3 }]);
  });
});
