// The shard processor driven by a scripted invoker on the memory store: what
// it does with each answer an invoker can give (effects, a suspension, a
// throw, no answer, effects for another instance).
import { create, fromBinary, type Message, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { implement, type Logger } from "@shoal/sdk";
import { CallResultInputSchema, type Envelope, EnvelopeSchema, memoIdOf, okReply, type Reply } from "@shoal/sdk/internal";
import { afterEach, describe, expect, it } from "vitest";
import { account } from "../../../../examples/bank/src/account.js";
import { AccountStateSchema, DepositRequestSchema } from "../../../../examples/bank/src/gen/bank/v1/account_pb.js";
import { AccountFunction } from "../../../../examples/bank/src/gen/bank/v1/account_shoal.js";
import { CallCycles } from "../invoker/call-cycles.js";
import type { InvokeRequest, InvokeResponse, Invoker } from "../invoker/invoker.js";
import { createRuntimeMetrics } from "../observe/metrics.js";
import { createMemoryStorage } from "../storage/memory/memory-storage.js";
import { type Clock, createManualClock, systemClock } from "./clock.js";
import { createInstanceCache } from "./instance-cache.js";
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
  options: { invokeTimeoutMs?: number; maxBatch?: number; clock?: Clock; callResendMs?: number; failDeliveries?: number } = {},
) {
  const requests: InvokeRequest[] = [];
  const invoker: Invoker = {
    invoke(request) {
      requests.push(request);
      return script(request, requests.length);
    },
  };
  const delivered: Envelope[] = [];
  let failedDeliveries = 0;
  let onDelivery: () => void = () => {};
  const errors: string[] = [];
  const logger: Logger = { debug() {}, info() {}, warn() {}, error: (message) => errors.push(message) };
  const metrics = createRuntimeMetrics({
    shardStats: () => [],
    storageStats: () => undefined,
    // The memory store has no server connection and no replicated log.
    connection: () => undefined,
    appendStats: () => undefined,
  });
  const storage = createMemoryStorage();
  let processor: ShardProcessor | undefined;
  const host: ShardHost = {
    nodeId: "node-1",
    clock: options.clock ?? systemClock,
    shards: 1,
    slots: createSemaphore(8),
    retry: { maxAttempts: 3, initialDelayMs: 1, maxDelayMs: 1 },
    memoRetentionMs: 60_000,
    instanceCache: createInstanceCache({ size: 100, idleMs: 60_000, now: () => systemClock.now() }),
    logger,
    metrics,
    callCycles: new CallCycles(),
    invoker,
    // As a remote endpoint is given: by function type, with the batch it takes.
    invokerFor: options.maxBatch === undefined ? undefined : () => Object.assign(invoker, { maxBatch: options.maxBatch }),
    invokeTimeoutMs: options.invokeTimeoutMs ?? 60_000,
    callResendMs: options.callResendMs,
    invocationLogger: () => logger,
    lookup: (name) => (name === type ? registered : undefined),
    shardOf: () => 0,
    shardFor: () => 0,
    call: () => Promise.reject(new Error("calls travel as messages (deliver)")),
    heldCall: (envelope) => {
      if (processor === undefined) throw new ShardUnavailableError("not open");
      return processor.heldCall(envelope);
    },
    async deliver(envelope) {
      // As a stream without a leader answers: nothing stored.
      if (failedDeliveries < (options.failDeliveries ?? 0)) {
        failedDeliveries++;
        throw new ShardUnavailableError("no responders");
      }
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
  const store = await storage.openShard(0, host.nodeId);
  const shard = new ShardProcessor(0, store, host);
  processor = shard;
  shard.start();
  closers.push(async () => {
    await shard.close();
    await storage.close();
  });
  return {
    shard,
    storage,
    store,
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

/** A script whose "first" on account a awaits one call to b, then commits; anything else commits at once. */
const callingFirst = async (req: InvokeRequest): Promise<InvokeResponse> => {
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
};

/** The call "caller/0" of invocation "caller" (account a, on node-2's shard 3): a deposit of 1 to account b. */
function callToB(): Envelope {
  return create(EnvelopeSchema, {
    id: "caller/0",
    callId: "caller/0",
    target: { type, key: "b" },
    handler: "Deposit",
    payload: toBinary(DepositRequestSchema, create(DepositRequestSchema, { account: "b", amount: 1n, transferId: "x" })),
    replyTo: { kind: { case: "call", value: { caller: { type, key: "a" }, invocationId: "caller", node: "node-2", shard: 3 } } },
  });
}

describe("ShardProcessor with a scripted invoker", () => {
  it("sends the calls of a suspended invocation as messages, keeps its instance locked, and runs it again once their results are in its journal", async () => {
    const t = await shardWith(callingFirst);
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

  it("sends no call from a shard that stopped while the invocation ran: it can no longer log the request before the call leaves", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const t = await shardWith(async (req) => {
      if (req.messages[0]?.envelope.id === "first") await gate;
      return callingFirst(req);
    });
    const first = request(t.shard, "first", "a");
    for (let i = 0; i < 100 && t.requests.length === 0; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(t.requests).toHaveLength(1);
    // Another owner opens the shard: the next commit here is fenced and the shard stops, answering its waiters.
    await t.storage.openShard(0, "node-2");
    expect(await request(t.shard, "other", "c")).toBeInstanceOf(ShardUnavailableError);
    expect(await first).toBeInstanceOf(ShardUnavailableError);
    // The handler of "first" only now reaches its call. Its sender retries at the new owner, which runs it
    // anew; a call sent from here as well would deposit without the withdrawal that goes with it.
    release();
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(t.requests.map((r) => r.messages[0]?.envelope.id)).toEqual(["first", "other"]);
    expect(t.delivered).toEqual([]);
  });

  it("sends a call again, as a new copy, when its result does not come within callResendMs, and finishes once it comes", async () => {
    const clock = createManualClock(1_000);
    const t = await shardWith(callingFirst, { clock, callResendMs: 10_000 });
    const first = request(t.shard, "first", "a");
    await t.deliveries(1);
    // Past the microtasks that follow the delivery: the invocation now awaits its result, and its resend timer runs.
    await new Promise((resolve) => setImmediate(resolve));
    await clock.advance(10_000);
    await t.deliveries(2);
    const [sent, again] = t.delivered as [Envelope, Envelope];
    expect(again.id).toBe(sent.id);
    // A new acceptedAtMs: the inputs stream stores the copy (its Nats-Msg-Id differs), and the callee answers it.
    expect(again.acceptedAtMs).toBeGreaterThan(sent.acceptedAtMs);
    await t.shard.submitCallResult(resultOf(again, okReply(new Uint8Array([3])), 1n));
    expect(await first).toMatchObject({ result: { case: "ok" } });
  });

  it("keeps the instance of an invocation whose call may have left: a message queued behind it never runs first, however long the call fails", async () => {
    // More failed sends than retry.maxAttempts (3 here): an invocation that gave up its instance would let "second" run first.
    const t = await shardWith(callingFirst, { failDeliveries: 5 });
    const first = request(t.shard, "first", "a");
    const second = request(t.shard, "second", "a");
    await t.deliveries(1);
    expect(t.requests.every((r) => r.messages[0]?.envelope.id === "first")).toBe(true);
    await t.shard.submitCallResult(resultOf(t.delivered[0] as Envelope, okReply(new Uint8Array([3])), 1n));
    expect(await first).toMatchObject({ result: { case: "ok" } });
    expect(await second).toMatchObject({ result: { case: "ok" } });
    expect(t.requests.at(-1)?.messages[0]?.envelope.id).toBe("second");
    expect(t.requests.at(-1)?.state).toEqual(balance(10n));
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

  describe("with an invoker that takes batches (a remote endpoint's maxBatch)", () => {
    /** Each message adds 1 to the balance it runs on; `egress` names an egress for the message of that id. */
    const addOne =
      (egress?: string) =>
      async (req: InvokeRequest): Promise<InvokeResponse> => {
        let amount = req.state === undefined ? 0n : fromBinary(AccountStateSchema, req.state).balance;
        const outcomes = req.messages.map((m) => {
          amount++;
          const out = m.envelope.id === egress ? [{ egress: "nowhere", typeName: "x", payload: new Uint8Array(), id: "e" }] : [];
          return {
            status: "done" as const,
            reply: okReply(new Uint8Array()),
            effects: { ...noEffects, state: { kind: "write" as const, bytes: balance(amount) }, egress: out },
          };
        });
        return { address: req.address, outcomes };
      };

    it("sends the messages queued on an instance in one request, up to maxBatch, and commits each answer in order without asking again", async () => {
      // Submitted in one go: they queue behind m1 before its request leaves.
      const t = await shardWith(addOne(), { maxBatch: 3 });
      const replies = ["m1", "m2", "m3", "m4", "m5"].map((id) => request(t.shard, id, "a"));
      for (const reply of replies) expect(await reply).toMatchObject({ result: { case: "ok" } });
      expect(t.requests.map((r) => r.messages.map((m) => m.envelope.id))).toEqual([
        ["m1", "m2", "m3"],
        ["m4", "m5"],
      ]);
      expect(t.requests[1]?.state).toEqual(balance(3n));
      expect(t.shard.stateOf(type, "a")).toEqual(balance(5n));
    });

    it("runs a message again when the state its batched answer ran on is not what the message before it committed", async () => {
      // m2's answer emits to an egress that does not exist: the shard fails m2 and commits no state
      // for it, so m3's answer (computed on m2's write) must not be used.
      const t = await shardWith(addOne("m2"), { maxBatch: 3 });
      const replies = ["m1", "m2", "m3"].map((id) => request(t.shard, id, "a"));
      expect(await replies[0]).toMatchObject({ result: { case: "ok" } });
      expect(await replies[1]).toMatchObject({ result: { case: "error", value: { code: Code.FailedPrecondition } } });
      expect(await replies[2]).toMatchObject({ result: { case: "ok" } });
      expect(t.requests.map((r) => r.messages.map((m) => m.envelope.id))).toEqual([["m1", "m2", "m3"], ["m3"]]);
      expect(t.requests[1]?.state).toEqual(balance(1n));
      expect(t.shard.stateOf(type, "a")).toEqual(balance(2n));
    });

    it("refuses an answer with more outcomes than messages, or none: nothing of it commits", async () => {
      const t = await shardWith(async (req, n) => {
        const answer = await addOne()(req);
        return n === 1 ? { ...answer, outcomes: [...answer.outcomes, ...answer.outcomes] } : n === 2 ? { ...answer, outcomes: [] } : answer;
      });
      expect(await request(t.shard, "m", "a")).toMatchObject({ result: { case: "ok" } });
      expect(t.requests).toHaveLength(3);
      expect(t.errors).toEqual([
        expect.stringContaining("the invoker answered 2 outcome(s) for 1 message(s) of bank.v1.Account/a"),
        expect.stringContaining("the invoker answered 0 outcome(s) for 1 message(s) of bank.v1.Account/a"),
      ]);
      expect(t.shard.stateOf(type, "a")).toEqual(balance(1n));
    });
  });

  it("keeps an idempotency key's reply in the store for memoRetentionMs, then the sweep deletes it there", async () => {
    const clock = createManualClock(1_000);
    const t = await shardWith(async (req) => done(req, 1n), { clock });
    const keyed = create(EnvelopeSchema, {
      id: "m",
      target: { type, key: "a" },
      handler: "Deposit",
      payload: new Uint8Array([1]),
      idempotencyKey: "key-1",
      replyTo: { kind: { case: "ingress", value: { node: "node-1", request: "m" } } },
    });
    expect(await ask(t.shard, keyed)).toMatchObject({ result: { case: "ok" } });
    const memoId = memoIdOf(keyed) as string;
    expect(t.store.get("memo", memoId)).toBeDefined();
    expect(t.shard.stats().memos).toBe(1);
    // Within the retention (60 s here) the sweep keeps it.
    await clock.advance(60_000);
    t.shard.maintain();
    await new Promise((resolve) => setImmediate(resolve));
    expect(t.store.get("memo", memoId)).toBeDefined();
    await clock.advance(1);
    t.shard.maintain();
    await new Promise((resolve) => setImmediate(resolve));
    expect(t.store.get("memo", memoId)).toBeUndefined();
    expect([...t.store.range("memoExpiry")]).toEqual([]);
    expect(t.shard.stats().memos).toBe(0);
  });

  it("sends a kept call result again, under a new id, when a copy of the call comes after it committed (its caller ran again and may not have it)", async () => {
    const t = await shardWith(async (req) => done(req, 1n));
    const call = callToB();
    await t.shard.submit(call);
    await t.deliveries(1);
    const first = t.delivered[0] as Envelope;
    expect(first.id).toBe("caller/0:r");
    // A copy of the call, as a new owner of the caller's shard sends when it runs the caller again.
    await t.shard.submit(create(EnvelopeSchema, call));
    await t.deliveries(2);
    const again = t.delivered[1] as Envelope;
    expect(again.id).toMatch(/^caller\/0:r@\d+$/);
    // The same result to the same caller, outside the outbox (no source sequence: the caller's journal keeps one result per call).
    expect({ ...again, id: first.id, source: first.source }).toEqual(first);
    expect(again.source).toBeUndefined();
    // The call ran once.
    expect(t.requests).toHaveLength(1);
  });

  it("keeps a withdrawn call's answer: a copy of it that comes later is answered FailedPrecondition and never runs", async () => {
    let release = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    const t = await shardWith(async (req, n) => {
      if (n === 1) await held;
      return done(req, 1n);
    });
    // The instance is busy, so the call waits in its mailbox and can be taken back.
    const first = request(t.shard, "first", "b");
    const call = callToB();
    await t.shard.submit(call);
    expect(await t.shard.withdrawCall(call)).toBe(true);
    release();
    await first;
    // A copy of the call, from a re-run of its caller on another node, or stored twice by the stream.
    await t.shard.submit(create(EnvelopeSchema, call));
    await t.deliveries(1);
    const answer = fromBinary(CallResultInputSchema, (t.delivered[0] as Envelope).payload).result?.reply?.result;
    expect(answer?.case).toBe("error");
    expect(answer?.case === "error" ? answer.value.code : undefined).toBe(Code.FailedPrecondition);
    await t.shard.whenIdle();
    // Only "first" ran.
    expect(t.requests.map((r) => r.messages[0]?.envelope.id)).toEqual(["first"]);
  });

  it("refuses a call before it comes, for a cycle answered at its caller: when it comes it is answered FailedPrecondition and never runs", async () => {
    const t = await shardWith(async (req) => done(req, 1n));
    const call = callToB();
    expect(await t.shard.withdrawCall(call)).toBe(true);
    // The copy that was on its way through the inputs stream.
    await t.shard.submit(call);
    await t.deliveries(1);
    const answer = fromBinary(CallResultInputSchema, (t.delivered[0] as Envelope).payload).result?.reply?.result;
    expect(answer?.case === "error" ? answer.value.code : undefined).toBe(Code.FailedPrecondition);
    expect(t.requests).toEqual([]);
    // Answered already: not refused a second time.
    expect(await t.shard.withdrawCall(call)).toBe(false);
  });

  it("keeps the journal of an invocation neither pending nor in flight for memoRetentionMs after a sweep first finds it, then deletes it from the store", async () => {
    const clock = createManualClock(1_000);
    const t = await shardWith(async (req) => done(req, 1n), { clock });
    // The result of a call whose caller is gone (its request was lost in a crash, say).
    const call = create(EnvelopeSchema, {
      id: "ghost/0",
      callId: "ghost/0",
      target: { type, key: "b" },
      handler: "Deposit",
      replyTo: { kind: { case: "call", value: { caller: { type, key: "a" }, invocationId: "ghost", node: "node-1", shard: 0 } } },
    });
    await t.shard.submitCallResult(resultOf(call, okReply(new Uint8Array([3])), 1n));
    expect(t.store.get("journal", "ghost")).toBeDefined();
    const sweep = async (ms: number) => {
      await clock.advance(ms);
      t.shard.maintain();
      await new Promise((resolve) => setImmediate(resolve));
    };
    await sweep(0);
    await sweep(60_000);
    // Orphaned for exactly the retention (60 s here): still kept for a retry of its request.
    expect(t.store.get("journal", "ghost")).toBeDefined();
    expect(t.shard.stats().journals).toBe(1);
    await sweep(60_000);
    expect(t.store.get("journal", "ghost")).toBeUndefined();
    expect(t.shard.stats().journals).toBe(0);
  });
});
