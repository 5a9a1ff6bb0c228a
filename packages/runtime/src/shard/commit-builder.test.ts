import { create, fromBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { CallResultInputSchema, EnvelopeSchema, errorReply, formatToken, memoIdOf, okReply, type Reply } from "@shoal/sdk/internal";
import { describe, expect, it } from "vitest";
import type { Effects } from "../invoker/invoker.js";
import { buildCommit, envelopeHash, pendingEffects } from "./commit-builder.js";
import { controlHandlers } from "./shard-state.js";

const reply: Reply = okReply(new Uint8Array([9]));
const call = create(EnvelopeSchema, {
  id: "call-1",
  target: { type: "bank.v1.Account", key: "bob" },
  handler: "Deposit",
  payload: new Uint8Array([1, 2]),
  callId: "inv-1/0",
  replyTo: {
    kind: { case: "call", value: { caller: { type: "bank.v1.Account", key: "alice" }, invocationId: "inv-1", node: "n", shard: 5 } },
  },
});
const noRequestBytes = () => new Uint8Array();

describe("buildCommit", () => {
  it("stamps the outbox with the next sequences, the call's $result last, and memoizes the reply", () => {
    const send = create(EnvelopeSchema, { id: "send-1", target: { type: "t", key: "k" }, handler: "H" });
    const commit = buildCommit({
      shard: 2,
      nextOutboxSequence: 7n,
      envelope: call,
      reply,
      effects: { outbox: [send] },
      nowMs: 1_000,
      memoRetentionMs: 500,
      delivered: { acked: [3n], egressDelivered: ["e1"] },
      requestBytes: noRequestBytes,
    });
    expect(commit.outbox.map((e) => [e.sequence, e.envelope?.id, e.envelope?.source?.shard, e.envelope?.source?.sequence])).toEqual([
      [7n, "send-1", 2, 7n],
      [8n, expect.any(String), 2, 8n],
    ]);
    const result = commit.outbox[1]?.envelope;
    expect(result?.handler).toBe(controlHandlers.callResult);
    expect(result?.target).toMatchObject({ type: "bank.v1.Account", key: "alice" });
    expect(result?.shard).toBe(5);
    const input = fromBinary(CallResultInputSchema, result?.payload ?? new Uint8Array());
    expect(input.invocationId).toBe("inv-1");
    expect(input.result?.callId).toBe("inv-1/0");
    expect(input.result?.reply).toEqual(reply);
    expect(commit.memos.map((m) => [m.id, m.expiresAtMs])).toEqual([[memoIdOf(call), 1_500n]]);
    expect(commit.memos[0]?.requestHash).toEqual(envelopeHash(call));
    expect(commit.consumed).toEqual(["call-1"]);
    expect(commit.acked).toEqual([3n]);
    expect(commit.egressDelivered).toEqual(["e1"]);
    expect(commit.deadLetters).toEqual([]);
  });

  it("records a dead letter with the request's bytes and the error", () => {
    const failed = errorReply(Code.Internal, "boom");
    const message = create(EnvelopeSchema, { id: "m1", target: { type: "t", key: "k" }, handler: "H" });
    const commit = buildCommit({
      shard: 0,
      nextOutboxSequence: 0n,
      envelope: message,
      reply: failed,
      effects: { deadLetter: true, finishedInvocations: ["m1"] },
      nowMs: 42,
      memoRetentionMs: 0,
      delivered: { acked: [], egressDelivered: [] },
      requestBytes: () => new Uint8Array([4]),
    });
    expect(commit.outbox).toEqual([]);
    expect(commit.memos).toEqual([]);
    expect(commit.finishedInvocations).toEqual(["m1"]);
    expect(commit.deadLetters.map((d) => [d.envelopeId, d.payload, d.error?.message, d.deadAtMs])).toEqual([
      ["m1", new Uint8Array([4]), "boom", 42n],
    ]);
  });
});

describe("pendingEffects", () => {
  it("turns state, sends, cancellations and egress into what the commit holds", () => {
    const warnings: string[] = [];
    const effects: Effects = {
      state: { kind: "write", bytes: new Uint8Array([1]) },
      sends: [{ id: "s1", target: { type: "t", key: "k" }, handler: "H", payload: new Uint8Array(), delayMs: 10 }],
      cancels: [
        formatToken({ target: { type: "t", key: "here" }, messageId: "d1" }),
        formatToken({ target: { type: "t", key: "there" }, messageId: "d2" }),
        "not a token",
      ],
      egress: [{ egress: "audit", typeName: "T", payload: new Uint8Array(), id: "e1" }],
    };
    const pending = pendingEffects(effects, {
      envelope: call,
      self: { type: "bank.v1.Account", key: "bob" },
      shard: 1,
      nowMs: 1_000,
      stateTtlMs: 60,
      journaled: true,
      shardOf: (_type, key) => (key === "here" ? 1 : 2),
      warn: (message) => warnings.push(message),
    });
    expect(pending.stateWrites).toEqual([
      { address: { type: "bank.v1.Account", key: "bob" }, state: new Uint8Array([1]), expiresAtMs: 1_060n },
    ]);
    expect(pending.outbox?.map((e) => [e.id, e.handler, e.deliverAtMs])).toEqual([
      ["s1", "H", 1_010n],
      [expect.any(String), controlHandlers.cancel, 0n],
    ]);
    expect(pending.cancellations).toEqual([{ shard: 1, envelopeId: "d1" }]);
    expect(pending.egress).toEqual([{ egress: "audit", typeName: "T", payload: new Uint8Array(), id: "e1" }]);
    expect(pending.finishedInvocations).toEqual(["call-1"]);
    expect(warnings).toHaveLength(1);
  });

  it("clears the state, and keeps an invocation without a journal out of finishedInvocations", () => {
    const pending = pendingEffects(
      { state: { kind: "clear" }, sends: [], cancels: [], egress: [] },
      {
        envelope: call,
        self: { type: "t", key: "k" },
        shard: 0,
        nowMs: 0,
        stateTtlMs: undefined,
        journaled: false,
        shardOf: () => 0,
        warn: () => {},
      },
    );
    expect(pending.stateWrites).toEqual([{ address: { type: "t", key: "k" }, clear: true }]);
    expect(pending.finishedInvocations).toBeUndefined();
  });
});
