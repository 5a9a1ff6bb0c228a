// Outbox entries reach each target shard in sequence order (DESIGN §7
// exactly-once): a receiver drops an entry at or below the last sequence it
// took from the entry's source, so an entry whose delivery failed must not be
// overtaken by a later one to the same shard. A runtime on the local LMDB
// store, 2 shards, whose one-way messages go through an in-process inbox (the
// `ShardInbox` the cluster's inputs stream implements) that refuses a call
// result for a while, the way a stream or a moving shard does.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { type Envelope, EnvelopeSchema, requestId } from "@shoal/sdk/internal";
import { afterEach, describe, expect, it } from "vitest";
import { DepositRequestSchema, TransferRequestSchema } from "../examples/bank/src/gen/bank/v1/account_pb.js";
import { AccountFunction } from "../examples/bank/src/gen/bank/v1/account_shoal.js";
import bank from "../examples/bank/src/module.js";
import type { ShardInbox } from "../packages/runtime/src/node/router.js";
import { createNodeRuntime, type NodeRuntime } from "../packages/runtime/src/node/runtime.js";
import { shardOf } from "../packages/runtime/src/protocol/shard-hash.js";
import { controlHandlers } from "../packages/runtime/src/shard/shard-state.js";
import { createLocalShardStorage } from "../packages/runtime/src/storage/local/lmdb-storage.js";

const shards = 2;

/** The first account name with `prefix` that lands on `shard`. */
function accountOn(shard: number, prefix: string): string {
  for (let i = 0; ; i++) if (shardOf(AccountFunction.typeName, `${prefix}${i}`, shards) === shard) return `${prefix}${i}`;
}

/**
 * An inbox in memory: one FIFO queue per shard, each consumed in order (as
 * the inputs stream's consumer does). `refuse` decides, per publish, whether
 * it fails unstored.
 */
function memoryInbox(refuse: (shard: number, envelope: Envelope) => boolean): ShardInbox {
  const queues = new Map<number, { items: Envelope[]; wake?: () => void }>();
  const queueOf = (shard: number) => {
    const queue = queues.get(shard) ?? { items: [] };
    queues.set(shard, queue);
    return queue;
  };
  return {
    async publish(shard, envelope) {
      if (refuse(shard, envelope)) throw new Error(`inbox of shard ${shard} unavailable`);
      const queue = queueOf(shard);
      queue.items.push(envelope);
      queue.wake?.();
    },
    consume(shard, submit) {
      const queue = queueOf(shard);
      let stopped = false;
      const done = (async () => {
        while (!stopped) {
          const next = queue.items[0];
          if (next === undefined) {
            await new Promise<void>((resolve) => {
              queue.wake = resolve;
            });
            continue;
          }
          await submit(next);
          queue.items.shift();
        }
      })();
      return {
        async stop() {
          stopped = true;
          queue.wake?.();
          await done.catch(() => undefined);
        },
      };
    },
  };
}

function request(handler: string, key: string, payload: Uint8Array): Envelope {
  return create(EnvelopeSchema, {
    id: requestId(),
    target: { type: AccountFunction.typeName, key },
    handler,
    payload,
    acceptedAtMs: BigInt(Date.now()),
  });
}

async function expectOk(node: NodeRuntime, envelope: Envelope, what: string) {
  const answer = await node.request(envelope);
  expect(answer.reply.result.case, `${what}: ${JSON.stringify(answer.reply.result.value)}`).toBe("ok");
}

describe("outbox delivery order", () => {
  const cleanup: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const done of cleanup.splice(0).reverse()) await done();
  });

  it("does not let a later call result overtake an earlier one whose delivery failed", { timeout: 60_000 }, async () => {
    // Two callers on shard 0 transfer to one payee on shard 1; the payee's
    // shard sends both call results back from its outbox, in that order.
    const first = accountOn(0, "first");
    const second = accountOn(0, "second");
    const payee = accountOn(1, "payee");
    let refusals = 0;
    let secondResultStored = false;
    const isResultFor = (envelope: Envelope, caller: string) =>
      envelope.handler === controlHandlers.callResult && envelope.target?.key === caller;
    const inbox = memoryInbox((_shard, envelope) => {
      if (isResultFor(envelope, second)) secondResultStored = true;
      // The first result is refused until the second one is stored, or (when
      // the sender waits for it, as it must) for a few retries.
      if (!isResultFor(envelope, first) || secondResultStored || refusals >= 5) return false;
      refusals++;
      return true;
    });
    const directory = await mkdtemp(join(tmpdir(), "shoal-outbox-order-"));
    const node = createNodeRuntime({
      functions: bank,
      storage: await createLocalShardStorage({ directory }),
      shards,
      logger: "silent",
      inbox,
    });
    await node.start();
    cleanup.push(async () => {
      await node.close();
      await rm(directory, { recursive: true, force: true });
    });
    for (const account of [first, second]) {
      const deposit = create(DepositRequestSchema, { account, amount: 10n });
      await expectOk(node, request("Deposit", account, toBinary(DepositRequestSchema, deposit)), `seed ${account}`);
    }

    const transfer = (from: string, transferId: string) =>
      request(
        "Transfer",
        from,
        toBinary(TransferRequestSchema, create(TransferRequestSchema, { account: from, to: payee, amount: 1n, transferId })),
      );
    const firstTransfer = expectOk(node, transfer(first, "t-first"), "the first transfer");
    await expect.poll(() => refusals, { timeout: 30_000 }).toBeGreaterThan(0);
    await expectOk(node, transfer(second, "t-second"), "the second transfer");
    // Without ordering the first result, retried after the second was
    // taken, is dropped as a duplicate and the first transfer never ends.
    let settled = false;
    const failure = firstTransfer.then(
      () => undefined,
      (err: unknown) => err,
    );
    void failure.then(() => {
      settled = true;
    });
    await expect
      .poll(() => settled, { timeout: 20_000, message: "the first transfer never got its call result: it was dropped" })
      .toBe(true);
    expect(await failure).toBeUndefined();
    const ledger = (key: string) => (node.stateOf(AccountFunction, key)?.ledger ?? []).map((e) => e.transferId);
    expect(ledger(first)).toEqual(["t-first"]);
    expect(ledger(payee).sort()).toEqual(["t-first", "t-second"]);
  });
});
