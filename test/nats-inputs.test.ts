// The shared inputs stream (DESIGN §9, storage/nats/shard-inputs.ts) on real
// nats-server processes, one server and a 3-node R3 cluster: publish and
// consume in order, de-duplication of a republished id (by JetStream within
// its window, by the shard after it), a consuming process SIGKILLed between
// a submit and its acknowledgement, handover to a new consumer (while the old
// owner's session still fetches), and hostile messages on a shard's subject.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AckPolicy, jetstream, jetstreamManager, type StreamUpdateConfig } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { type Envelope, EnvelopeSchema } from "@shoal/sdk/internal";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { AccountFunction } from "../examples/bank/src/gen/bank/v1/account_shoal.js";
import bank from "../examples/bank/src/module.js";
import { createShardOwnership } from "../packages/runtime/src/node/ownership.js";
import { createNodeRuntime, type NodeRuntime } from "../packages/runtime/src/node/runtime.js";
import { shardOf } from "../packages/runtime/src/protocol/shard-hash.js";
import { createNatsShardStorage } from "../packages/runtime/src/storage/nats/nats-shard-storage.js";
import { createShardInputs, type InputConsumer, type ShardInputs } from "../packages/runtime/src/storage/nats/shard-inputs.js";
import { InvalidInputError } from "../packages/runtime/src/storage/storage.js";
import { deposit, until } from "./support/inputs.js";
import { type NatsCluster, startNatsCluster, streamLeader } from "./support/nats-cluster.js";
import { removeNatsPrefix, uniquePrefix, waitForPlacement } from "./support/nats-storage.js";
import { type Child, repoRoot, start } from "./support/processes.js";

/** Generous: the machine running the tests may be busy. */
const ackTimeoutMs = 15_000;

/** A submit that records the ids it was given, in order. */
function recorder() {
  const ids: string[] = [];
  return { ids, submit: async (e: Envelope) => void ids.push(e.id) };
}

/** The number of messages the inputs stream holds (acknowledged ones are gone: a work queue). */
async function held(nc: NatsConnection, inputs: ShardInputs): Promise<number> {
  const jsm = await jetstreamManager(nc, { timeout: ackTimeoutMs });
  return (await jsm.streams.info(inputs.streamName)).state.messages;
}

describe.each([1, 3] as const)("the inputs stream on %i nats-server(s)", (size) => {
  let cluster: NatsCluster;
  let nc: NatsConnection;
  let prefix = "";
  const cleanup: Array<() => Promise<unknown>> = [];

  beforeAll(async () => {
    cluster = await startNatsCluster({ size });
    nc = await cluster.connect();
    if (size === 3) await waitForPlacement(nc);
  }, 120_000);
  afterEach(async () => {
    for (const done of cleanup.splice(0).reverse()) await done();
    const jsm = await jetstreamManager(nc, { timeout: ackTimeoutMs });
    await jsm.streams.delete(`${prefix}-inputs`).catch(() => undefined);
    await removeNatsPrefix(nc, prefix);
  });
  afterAll(async () => {
    await nc?.close();
    await cluster?.close();
  });

  function inputs(
    options: { duplicateWindowMs?: number; maxInFlight?: number; errors?: string[]; blindConsumers?: boolean } = {},
  ): ShardInputs {
    const errors = options.errors;
    return createShardInputs({
      connection: nc,
      prefix,
      ackTimeoutMs,
      ...options,
      logger: { warn: () => undefined, error: (message) => void errors?.push(message) },
    });
  }

  function consuming(consumer: InputConsumer): InputConsumer {
    cleanup.push(() => consumer.stop());
    return consumer;
  }

  /** A runtime on the nats backend, in this process: one shard, or `shards` of which it opens `owned`, taking one-way messages from the inputs stream. */
  async function runtime(cluster?: { shards: number; owned: number[] }): Promise<NodeRuntime> {
    const directory = await mkdtemp(join(tmpdir(), "shoal-inputs-"));
    const storage = await createNatsShardStorage({ connection: nc, directory, prefix, ackTimeoutMs });
    const node = createNodeRuntime({
      functions: bank,
      storage,
      shards: cluster?.shards ?? 1,
      logger: "warn",
      ...(cluster === undefined ? {} : { ownership: createShardOwnership(cluster.owned), inbox: inputs() }),
    });
    await node.start();
    cleanup.push(async () => {
      await node.close();
      await rm(directory, { recursive: true, force: true });
    });
    return node;
  }

  function ledgerOf(node: NodeRuntime, account: string): string[] {
    return (node.stateOf(AccountFunction, account)?.ledger ?? []).map((e) => e.transferId);
  }

  it("hands a shard its inputs in publish order and stores a republished id once", { timeout: 120_000 }, async () => {
    prefix = uniquePrefix();
    const stream = inputs();
    const sent = Array.from({ length: 20 }, (_, i) => deposit(`a${i % 3}`));
    for (const envelope of sent) await stream.publish(0, envelope);
    // A sender that did not hear the acknowledgement publishes again.
    await stream.publish(0, sent[4] as Envelope);
    await stream.publish(1, deposit("other"));
    expect(await held(nc, stream)).toBe(21);
    const shard0 = recorder();
    consuming(stream.consume(0, shard0.submit));
    await until("shard 0 has its 20 inputs", () => shard0.ids.length >= 20);
    await until("they are acknowledged", async () => (await held(nc, stream)) === 1);
    expect(shard0.ids).toEqual(sent.map((e) => e.id));
  });

  it("makes no consumer while its name cannot be recorded, and reads the shard's inputs once it can", { timeout: 120_000 }, async () => {
    prefix = uniquePrefix();
    const jsm = await jetstreamManager(nc, { timeout: ackTimeoutMs });
    const bucket = `${prefix}-inputs-consumers`;
    const kvm = new Kvm(jetstream(nc));
    // The names' bucket there but taking no write: its stream sealed.
    await kvm.create(bucket, { history: 1, ttl: 3_600_000, replicas: size });
    const sealed = (await jsm.streams.info(`KV_${bucket}`)).config;
    // nats.js's update type leaves `sealed` out, although only an update may set it.
    await jsm.streams.update(`KV_${bucket}`, { ...sealed, sealed: true } as Partial<StreamUpdateConfig>);
    const warnings: string[] = [];
    const stream = createShardInputs({
      connection: nc,
      prefix,
      ackTimeoutMs,
      logger: { warn: (message, fields) => void warnings.push(`${message} ${String(fields?.error)}`), error: () => undefined },
    });
    const sent = deposit("a");
    await stream.publish(0, sent);
    const shard0 = recorder();
    consuming(stream.consume(0, shard0.submit));
    await until("shard 0 failed three sessions on the record", () =>
      warnings.some((w) => w.includes("recording the name of consumer") && w.includes("so it is not made yet")),
    );
    const consumersOf = async (shard: number) => {
      const names: string[] = [];
      for await (const info of await jsm.consumers.list(stream.streamName))
        if (info.config.filter_subject === stream.subject(shard)) names.push(info.name);
      return names;
    };
    expect(await consumersOf(0)).toEqual([]);
    expect(shard0.ids).toEqual([]);

    // The bucket takes writes again: the shard's consumer is made, under a recorded name, and reads the input.
    await jsm.streams.delete(`KV_${bucket}`);
    await kvm.create(bucket, { history: 1, ttl: 3_600_000, replicas: size });
    await until("shard 0 has its input", () => shard0.ids.length === 1);
    expect(shard0.ids).toEqual([sent.id]);
    const [made] = await consumersOf(0);
    const recorded: string[] = [];
    for await (const key of await (await kvm.open(bucket)).keys("0.*")) recorded.push(key.slice(2));
    expect(recorded).toContain(made);
  });

  it("takes the inputs by their sequence when new consumers keep missing inputs the stream holds, in order and once", {
    timeout: 120_000,
  }, async () => {
    prefix = uniquePrefix();
    // Consumers that see none of the inputs: what a nats-server 2.9 whose subject index lost them makes.
    const stream = inputs({ blindConsumers: true });
    const before = Array.from({ length: 5 }, () => deposit("a"));
    const otherShard = Array.from({ length: 2 }, () => deposit("b"));
    for (const [i, envelope] of before.entries()) {
      await stream.publish(0, envelope);
      if (i < otherShard.length) await stream.publish(1, otherShard[i] as Envelope);
    }
    const taken = recorder();
    consuming(stream.consume(0, taken.submit));
    await until("the shard took the inputs its consumers missed", () => taken.ids.length >= before.length);
    // Shard 1's inputs are left alone; shard 0's are removed once taken.
    await until("only shard 1's inputs are left", async () => (await held(nc, stream)) === otherShard.length);
    // Inputs that come later are taken behind them.
    const after = Array.from({ length: 3 }, () => deposit("a"));
    for (const envelope of after) await stream.publish(0, envelope);
    await until("the later inputs arrived", () => taken.ids.length >= before.length + after.length, 90_000);
    expect(taken.ids).toEqual([...before, ...after].map((e) => e.id));
    for (const e of otherShard) expect(taken.ids).not.toContain(e.id);
  });

  it("resumes with a new consumer at the first input the last one did not acknowledge", { timeout: 120_000 }, async () => {
    prefix = uniquePrefix();
    const stream = inputs({ maxInFlight: 1 });
    const sent = Array.from({ length: 10 }, () => deposit("a"));
    for (const envelope of sent) await stream.publish(0, envelope);
    // The first owner takes 4 inputs durably, then its shard refuses (it moved).
    const first: string[] = [];
    const firstConsumer = stream.consume(0, async (e) => {
      if (first.length === 4) throw new Error("ShardUnavailable: the shard moved");
      first.push(e.id);
    });
    await until("the first owner took 4 inputs", async () => first.length === 4 && (await held(nc, stream)) === 6);
    await firstConsumer.stop();
    const second = recorder();
    consuming(stream.consume(0, second.submit));
    await until("the new owner has the rest", () => second.ids.length >= 6);
    await until("they are acknowledged", async () => (await held(nc, stream)) === 0);
    expect([...first, ...second.ids]).toEqual(sent.map((e) => e.id));
  });

  it("gives a new owner every input in order while an older owner's session still fetches", { timeout: 120_000 }, async () => {
    prefix = uniquePrefix();
    const [a, f1, f2, b, c] = Array.from({ length: 5 }, () => deposit("a")) as [Envelope, Envelope, Envelope, Envelope, Envelope];
    await inputs().publish(0, a);
    // The old owner (paused, or about to learn its shard moved) takes a, and stalls.
    const stale: string[] = [];
    const fenced: Array<(err: Error) => void> = [];
    let resumeStale = () => {};
    consuming(
      inputs({ maxInFlight: 1 }).consume(0, (e) => {
        stale.push(e.id);
        if (stale.length === 1) return new Promise<void>((resolve) => (resumeStale = resolve));
        // Its appends are refused by the new owner's fence, after a while.
        return new Promise<void>((_, reject) => fenced.push(reject));
      }),
    );
    cleanup.push(async () => {
      for (const refuse of fenced) refuse(new Error("ShardUnavailable: the shard moved"));
    });
    await until("the old owner holds a", () => stale.length === 1);
    // The new owner drops an input at or below the last stream sequence it took, as a shard does.
    const taken: string[] = [];
    let watermark = 0n;
    const take = (e: Envelope) => {
      const sequence = e.source?.sequence ?? 0n;
      if (sequence <= watermark) return;
      watermark = sequence;
      taken.push(e.id);
    };
    let holding = 0;
    let resumeNew: (() => void) | undefined;
    const appended = new Promise<void>((resolve) => (resumeNew = resolve));
    const newer = inputs({ maxInFlight: 3 });
    consuming(
      newer.consume(0, (e) => {
        if (resumeNew === undefined) {
          take(e);
          return Promise.resolve();
        }
        holding++;
        return appended.then(() => take(e));
      }),
    );
    // The new owner's appends of its first three inputs are slow: it fetches no more meanwhile.
    await newer.publish(0, f1);
    await newer.publish(0, f2);
    await until("the new owner holds three inputs", () => holding === 3);
    // The old owner goes on fetching.
    resumeStale();
    await newer.publish(0, b);
    await until("the old owner took another input", () => stale.length === 2);
    const resume = resumeNew;
    resumeNew = undefined;
    resume?.();
    await newer.publish(0, c);
    await until("the new owner took c", () => taken.includes(c.id));
    expect(taken).toEqual([a.id, f1.id, f2.id, b.id, c.id]);
  });

  /**
   * A delivery lost on its way to the session (the server sent it to a
   * connection that broke, as around a nats-server restart): here a thief
   * pulls it from the session's own consumer and never acknowledges it. A
   * shard that took the inputs behind it would drop it when it came back
   * after the ack wait (at or below its watermark): the session must notice
   * the gap and start again from the first unacknowledged input.
   */
  async function stealNextDelivery(stream: ShardInputs, hold: () => boolean): Promise<{ stolen: Promise<string> }> {
    const jsm = await jetstreamManager(nc, { timeout: ackTimeoutMs });
    let name: string | undefined;
    await until("the session has its consumer", async () => {
      for await (const info of await jsm.consumers.list(stream.streamName))
        if (info.config.filter_subject === stream.subject(0)) name = info.name;
      return name !== undefined && hold();
    });
    // The session holds maxInFlight (1) unacknowledged inputs, so it does not pull: room for one more, for the thief.
    const info = await jsm.consumers.info(stream.streamName, name as string);
    await jsm.consumers.update(stream.streamName, name as string, { max_ack_pending: info.config.max_ack_pending! + 1 });
    const thief = await jetstream(nc, { timeout: ackTimeoutMs }).consumers.get(stream.streamName, name as string);
    const batch = await thief.fetch({ max_messages: 1, expires: 30_000 });
    const stolen = (async () => {
      for await (const message of batch) return fromBinary(EnvelopeSchema, message.data).id;
      throw new Error("the thief got nothing");
    })();
    return { stolen };
  }

  /** A shard's submit: drops an input at or below the last stream sequence it took, as a shard does; `held` inputs wait for `release`. */
  function watermarked(holdFirst: number) {
    const taken: string[] = [];
    let watermark = 0n;
    let held = 0;
    let release = () => {};
    const released = new Promise<void>((resolve) => (release = resolve));
    const submit = async (e: Envelope) => {
      if (held < holdFirst) {
        held++;
        await released;
      }
      const sequence = e.source?.sequence ?? 0n;
      if (sequence <= watermark) return;
      watermark = sequence;
      taken.push(e.id);
    };
    return { taken, submit, holding: () => held === holdFirst, release: () => release() };
  }

  /** Inputs with one in flight per consumer, whose warnings are kept (with their fields). */
  function inputsOneAtATime(): { stream: ShardInputs; warnings: string[] } {
    prefix = uniquePrefix();
    const warnings: string[] = [];
    const stream = createShardInputs({
      connection: nc,
      prefix,
      ackTimeoutMs,
      maxInFlight: 1,
      logger: { warn: (m, f) => void warnings.push(`${m} ${JSON.stringify(f)}`), error: () => undefined },
    });
    return { stream, warnings };
  }

  /** Publishes a, has a shard consume with a held, and has a thief take b's delivery: the shard's session never gets it. */
  async function consumeAndLoseB(stream: ShardInputs, a: Envelope, b: Envelope) {
    const shard = watermarked(1);
    await stream.publish(0, a);
    consuming(stream.consume(0, shard.submit));
    const { stolen } = await stealNextDelivery(stream, shard.holding);
    await stream.publish(0, b);
    expect(await stolen).toBe(b.id);
    return shard;
  }

  it("starts again from the first unacknowledged input when a delivery is lost on its way, instead of taking the inputs behind it", {
    timeout: 120_000,
  }, async () => {
    const { stream, warnings } = inputsOneAtATime();
    const [a, b, c] = [deposit("a"), deposit("a"), deposit("a")] as [Envelope, Envelope, Envelope];
    const shard = await consumeAndLoseB(stream, a, b);
    await stream.publish(0, c);
    shard.release();
    await until("the shard took c", () => shard.taken.includes(c.id), 30_000);
    expect(shard.taken).toEqual([a.id, b.id, c.id]);
    // On R3 the update of the consumer above may also end the session's fetch ("heartbeats missed"): a new session all the same.
    if (size === 1) expect(warnings.join("\n")).toMatch(/delivery 2 of its consumer \(the next that arrived was 3\)/);
  });

  it("notices a delivery lost last, with none behind it, from the consumer's count of deliveries", { timeout: 120_000 }, async () => {
    const { stream, warnings } = inputsOneAtATime();
    const [a, b] = [deposit("a"), deposit("a")] as [Envelope, Envelope];
    const shard = await consumeAndLoseB(stream, a, b);
    shard.release();
    // Without the count, b would come back only after the consumer's ack wait (30 s).
    await until("the shard took b", () => shard.taken.includes(b.id), 25_000);
    expect(shard.taken).toEqual([a.id, b.id]);
    // On R3 the update of the consumer above may also end the session's fetch ("heartbeats missed"): a new session all the same.
    if (size === 1) expect(warnings.join("\n")).toMatch(/delivery 2 of its consumer \(counted by the server, never received\)/);
  });

  // Only a cluster has a consumer without a leader while its stream has one.
  if (size === 3)
    it("takes over a shard whose last consumer has no leader (its server is down), which a listing of consumers leaves out", {
      timeout: 180_000,
    }, async () => {
      prefix = uniquePrefix();
      const stream = inputs();
      const a = deposit("a");
      await stream.publish(0, a);
      // An earlier session's consumer, on one replica only, so that killing its server leaves it without a leader
      // while the stream keeps its quorum (on R3, a consumer's replicas can be without a leader the same way, for a while).
      const jsm = await jetstreamManager(nc, { timeout: ackTimeoutMs });
      const orphan = `${prefix}-in-0-0123456789ab`;
      await jsm.consumers.add(stream.streamName, {
        durable_name: orphan,
        filter_subject: stream.subject(0),
        ack_policy: AckPolicy.Explicit,
        num_replicas: 1,
      });
      const host = (await jsm.consumers.info(stream.streamName, orphan)).cluster?.leader as string;
      await cluster.server(host).kill();
      cleanup.push(async () => {
        await cluster.server(host).restart();
        await cluster.ready();
      });
      await streamLeader(cluster, nc, stream.streamName);
      const shard = recorder();
      consuming(stream.consume(0, shard.submit));
      await until("the new session took a", () => shard.ids.includes(a.id), 60_000);
      expect(shard.ids).toEqual([a.id]);
    });

  it("reports a message that is not an envelope with its stream and sequence, drops it, and goes on", { timeout: 120_000 }, async () => {
    prefix = uniquePrefix();
    const errors: string[] = [];
    const stream = inputs({ errors });
    const good = [deposit("a"), deposit("b"), deposit("c"), deposit("d")];
    const js = jetstream(nc, { timeout: ackTimeoutMs });
    await stream.publish(0, good[0] as Envelope);
    await js.publish(stream.subject(0), new Uint8Array([0xff, 0xff, 0xff]));
    await stream.publish(0, good[1] as Envelope);
    await js.publish(stream.subject(0), toBinary(EnvelopeSchema, create(EnvelopeSchema, { id: "no-target" })));
    await stream.publish(0, good[2] as Envelope);
    await stream.publish(0, good[3] as Envelope);
    const got = recorder();
    consuming(
      stream.consume(0, async (e) => {
        // The node's check: an envelope for another shard is refused for good.
        if (e.target?.key === "c") throw new InvalidInputError("it belongs to shard 7");
        await got.submit(e);
      }),
    );
    await until("every message was handled", async () => (await held(nc, stream)) === 0);
    expect(got.ids).toEqual([good[0]?.id, good[1]?.id, good[3]?.id]);
    expect(errors).toHaveLength(3);
    expect(errors[0]).toMatch(new RegExp(`message 2 of stream ${prefix}-inputs .* is dropped: it is not a Shoal envelope`));
    expect(errors[1]).toMatch(new RegExp(`message 4 of stream ${prefix}-inputs .* is dropped: envelope "no-target" has no target`));
    expect(errors[2]).toMatch(new RegExp(`message 5 of stream ${prefix}-inputs .* is dropped: it belongs to shard 7`));
  });

  it("applies a message once when a copy comes after the duplicate window", { timeout: 120_000 }, async () => {
    prefix = uniquePrefix();
    const stream = inputs({ duplicateWindowMs: 200 });
    const node = await runtime();
    consuming(stream.consume(0, (e) => node.accept(e)));
    // An outbox entry (its source shard and sequence) and a send with an idempotency key.
    const outbox = deposit("a", "outbox-1", { source: { shard: 3, sequence: 7n } });
    const keyed = deposit("b", "keyed-1", { idempotencyKey: "k1" });
    await stream.publish(0, outbox);
    await stream.publish(0, keyed);
    await until("both are applied", () => ledgerOf(node, "a").length === 1 && ledgerOf(node, "b").length === 1);
    // Past the window JetStream stores a copy again (a sender that retried late).
    await new Promise((resolve) => setTimeout(resolve, 400));
    const jsm = await jetstreamManager(nc, { timeout: ackTimeoutMs });
    const before = (await jsm.streams.info(stream.streamName)).state.last_seq;
    await stream.publish(0, outbox);
    await stream.publish(0, keyed);
    expect((await jsm.streams.info(stream.streamName)).state.last_seq).toBe(before + 2);
    await until("the copies are consumed", async () => (await held(nc, stream)) === 0);
    await node.whenIdle();
    expect(ledgerOf(node, "a")).toEqual(["outbox-1"]);
    expect(ledgerOf(node, "b")).toEqual(["keyed-1"]);
  });

  it("accepts a one-way send to a shard no node has open, and applies it once when a node takes the shard", {
    timeout: 120_000,
  }, async () => {
    prefix = uniquePrefix();
    const account = Array.from({ length: 100 }, (_, i) => `k${i}`).find((k) => shardOf(AccountFunction.typeName, k, 2) === 1) as string;
    const a = await runtime({ shards: 2, owned: [0] });
    const b = await runtime({ shards: 2, owned: [1] });
    // Sent through node a, which does not own the shard: published, consumed by its owner b.
    const first = deposit(account);
    await a.accept(first);
    await until("b applied it", () => b.stateOf(AccountFunction, account)?.ledger.length === 1);
    await b.close();
    // The owner is gone: the send is accepted all the same, durably.
    const second = deposit(account);
    await a.accept(second);
    await a.acquireShard(1);
    await until("a applied it after taking the shard", () => ledgerOf(a, account).length >= 2);
    await a.whenIdle();
    expect(ledgerOf(a, account)).toEqual([first.id, second.id]);
  });

  it("loses and doubles nothing when the consuming process is SIGKILLed between a submit and its acknowledgement", {
    timeout: 180_000,
  }, async () => {
    prefix = uniquePrefix();
    const stream = inputs();
    const sent = Array.from({ length: 30 }, (_, i) => deposit("acct", `d${String(i).padStart(2, "0")}`));
    for (const envelope of sent) await stream.publish(0, envelope);
    const directory = await mkdtemp(join(tmpdir(), "shoal-inputs-child-"));
    cleanup.push(() => rm(directory, { recursive: true, force: true }));
    const child = consumingChild(cluster.urls, prefix, directory, "d09");
    cleanup.push(async () => {
      if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill("SIGKILL");
      await child.exited;
    });
    // d09 is committed (applied, durably) and its acknowledgement never sent.
    await child.waitFor(/^stalled d09$/m, 60_000);
    child.process.kill("SIGKILL");
    await child.exited;
    expect(await held(nc, stream)).toBeGreaterThan(0);
    // A new owner with an empty directory: the shard comes back from its WAL, and the inputs stream redelivers d09 on.
    const node = await runtime();
    consuming(stream.consume(0, (e) => node.accept(e)));
    await until("every input is consumed", async () => (await held(nc, stream)) === 0);
    await node.whenIdle();
    expect(ledgerOf(node, "acct")).toEqual(sent.map((e) => e.id));
    expect(node.stateOf(AccountFunction, "acct")?.balance).toBe(30n);
  });
});

const dist = (path: string) => JSON.stringify(join(repoRoot, "packages/runtime/dist", path));

/**
 * A process that owns shard 0 (of 1) on the nats backend and consumes its
 * inputs; once input `stall` is durable and processed it prints
 * `stalled <id>` and never lets its submit resolve, so the input stays
 * unacknowledged until the test kills it.
 */
function consumingChild(servers: string[], prefix: string, directory: string, stall: string): Child {
  const script = `
    import { connect } from "@nats-io/transport-node";
    import { createNodeRuntime } from ${dist("node/runtime.js")};
    import { createNatsShardStorage } from ${dist("storage/nats/nats-shard-storage.js")};
    import { createShardInputs } from ${dist("storage/nats/shard-inputs.js")};
    import bank from ${JSON.stringify(join(repoRoot, "examples/bank/dist/module.js"))};
    const nc = await connect({ servers: ${JSON.stringify(servers)} });
    const prefix = ${JSON.stringify(prefix)};
    const storage = await createNatsShardStorage({ connection: nc, directory: ${JSON.stringify(directory)}, prefix, ackTimeoutMs: 15000 });
    const node = createNodeRuntime({ functions: bank, storage, shards: 1, logger: "warn" });
    await node.start();
    const inputs = createShardInputs({ connection: nc, prefix, ackTimeoutMs: 15000, maxInFlight: 4 });
    inputs.consume(0, async (envelope) => {
      await node.accept(envelope);
      if (envelope.id !== ${JSON.stringify(stall)}) return;
      await node.whenIdle();
      console.log("stalled " + envelope.id);
      await new Promise(() => {});
    });
  `;
  return start(process.execPath, ["--input-type=module", "-e", script], { cwd: repoRoot });
}
