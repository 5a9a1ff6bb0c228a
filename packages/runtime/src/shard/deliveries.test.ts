import { create } from "@bufbuild/protobuf";
import type { Logger } from "@shoal/sdk";
import { type EgressMessage, EgressMessageSchema, type Envelope, EnvelopeSchema, type LogRecord } from "@shoal/sdk/internal";
import { describe, expect, it } from "vitest";
import { createDeliveries, type DeliveryHost } from "./deliveries.js";

const logger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** Deliveries whose host fails the first `failures` deliveries; `appended` resolves with the first record written. */
function deliveriesWith(failures: number, overrides: Partial<DeliveryHost> = {}) {
  const attempts: Envelope[] = [];
  let written: (records: LogRecord[]) => void = () => {};
  const appended = new Promise<LogRecord[]>((resolve) => {
    written = resolve;
  });
  const deliveries = createDeliveries({
    shard: 3,
    logger,
    deliver: async (envelope) => {
      attempts.push(envelope);
      if (attempts.length <= failures) throw new Error("target shard unavailable");
    },
    targetShard: (envelope) => Number(envelope.target?.key ?? 0),
    emitEgress: async () => {},
    append: async (records) => written(records),
    closed: () => false,
    stopped: () => false,
    ...overrides,
  });
  return { deliveries, attempts, appended };
}

const commitOf = (records: LogRecord[]) => (records[0]?.kind.case === "commit" ? records[0].kind.value : undefined);

describe("deliveries", () => {
  it("retries an outbox entry until its target has it, then writes its acknowledgement", async () => {
    const { deliveries, attempts, appended } = deliveriesWith(2);
    deliveries.deliverOutbox(7n, create(EnvelopeSchema, { id: "m1" }));
    const commit = commitOf(await appended);
    expect(attempts.map((e) => e.id)).toEqual(["m1", "m1", "m1"]);
    expect(commit?.acked).toEqual([7n]);
  });

  it("delivers the entries to one target shard in sequence order, a later one only once the earlier is delivered", async () => {
    const to = (id: string, shard: number) => create(EnvelopeSchema, { id, target: { type: "t", key: String(shard) } });
    const acked: bigint[] = [];
    const { deliveries, attempts } = deliveriesWith(1, {
      append: async (records) => void acked.push(...(commitOf(records)?.acked ?? [])),
    });
    deliveries.deliverOutbox(1n, to("first", 1));
    deliveries.deliverOutbox(3n, to("third", 1));
    deliveries.deliverOutbox(2n, to("other target", 2));
    // Recovery handing an entry that is already queued again.
    deliveries.deliverOutbox(3n, to("third", 1));
    await expect.poll(() => acked.length).toBe(3);
    // "first" failed once: "third", behind it, waited for its retry; the other target did not.
    expect(attempts.map((e) => e.id)).toEqual(["first", "other target", "first", "third"]);
    expect(acked).toEqual([2n, 1n, 3n]);
  });

  it("records an emitted egress message as delivered", async () => {
    const { deliveries, appended } = deliveriesWith(0);
    const message: EgressMessage = create(EgressMessageSchema, { id: "e1", egress: "audit" });
    deliveries.emitEgress(message);
    expect(commitOf(await appended)?.egressDelivered).toEqual(["e1"]);
  });

  it("hands what no commit carried yet to the next commit, and takes it back when that commit was not appended", async () => {
    const { deliveries } = deliveriesWith(0);
    expect(deliveries.appendPending()).toBeUndefined();
    deliveries.putBack({ acked: [1n], egressDelivered: ["e1"] });
    const taken = deliveries.take();
    expect(taken).toEqual({ acked: [1n], egressDelivered: ["e1"] });
    expect(deliveries.take()).toEqual({ acked: [], egressDelivered: [] });
    deliveries.putBack(taken);
    expect(deliveries.take()).toEqual(taken);
  });

  it("delivers nothing once the shard stopped", async () => {
    const { deliveries, attempts } = deliveriesWith(0, { stopped: () => true });
    deliveries.deliverOutbox(1n, create(EnvelopeSchema, { id: "m1" }));
    expect(attempts).toEqual([]);
  });
});
