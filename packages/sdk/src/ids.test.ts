import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { EnvelopeSchema } from "./gen/shoal/v1/protocol_pb.js";
import {
  callId,
  callResultId,
  cancelId,
  egressId,
  formatToken,
  idempotentRequestId,
  instanceId,
  type MemoKey,
  memoId,
  memoIdOf,
  parseMemoId,
  parseToken,
  requestId,
  sendId,
} from "./ids.js";

describe("envelope ids", () => {
  it("names the ids an invocation makes after the invocation", () => {
    expect(callId("inv", 2)).toBe("inv/2");
    expect(sendId("inv", 0)).toBe("inv:s0");
    expect(egressId("inv", 3)).toBe("inv:e3");
    expect(callResultId("inv/2")).toBe("inv/2:r");
    expect(cancelId("inv", 1, "other:s0")).toBe("inv:c1:other:s0");
    expect(instanceId("shop.v1.Cart", "joe")).toBe("shop.v1.Cart\u0000joe");
  });

  it("makes a fresh random id for each request without an idempotency key", () => {
    const ids = new Set(Array.from({ length: 100 }, () => requestId()));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it("derives an idempotent request's id as before: k- and the base64url SHA-256 of instance, handler and key", () => {
    for (const [type, key, handler, idempotencyKey] of [
      ["shop.v1.Cart", "joe", "AddItem", "add-1"],
      ["bank.v1.Account", "", "Open", "ключ ✓"],
      ["t", "a\u0000b", "H", "k"],
    ] as const) {
      const before = `k-${createHash("sha256").update(`${type}\u0000${key}\u0000${handler}\u0000${idempotencyKey}`).digest("base64url")}`;
      expect(idempotentRequestId(type, key, handler, idempotencyKey)).toBe(before);
    }
    expect(idempotentRequestId("t", "k", "H", "1")).not.toBe(idempotentRequestId("t", "k", "H", "2"));
  });
});

describe("memo ids", () => {
  const memos: MemoKey[] = [
    { kind: "call", callId: "inv/0" },
    { kind: "call", callId: "k-abc/3/1" },
    { kind: "idempotency", target: { type: "shop.v1.Cart", key: "joe" }, handler: "AddItem", idempotencyKey: "add-1" },
    { kind: "idempotency", target: { type: "shop.v1.Cart", key: "" }, handler: "AddItem", idempotencyKey: "k" },
    // A key is the user's string: it may hold the separator.
    { kind: "idempotency", target: { type: "shop.v1.Cart", key: "a\u0000idem\u0000b" }, handler: "AddItem", idempotencyKey: "k" },
  ];

  it.each(memos.map((m) => [memoId(m), m] as const))("%j parses back", (id, memo) => {
    expect(parseMemoId(id)).toEqual(memo);
  });

  it("keeps the stored schemes: call\\0<call id> and idem\\0<type>\\0<key>\\0<handler>\\0<key>", () => {
    expect(memoId({ kind: "call", callId: "inv/0" })).toBe("call\u0000inv/0");
    expect(memoId({ kind: "idempotency", target: { type: "T", key: "k" }, handler: "H", idempotencyKey: "i" })).toBe(
      "idem\u0000T\u0000k\u0000H\u0000i",
    );
  });

  it("gives a message's memo id by its call id, else its idempotency key, else none", () => {
    const base = { id: "m", target: { type: "T", key: "k" }, handler: "H" };
    expect(memoIdOf(create(EnvelopeSchema, { ...base, callId: "inv/1", idempotencyKey: "i" }))).toBe("call\u0000inv/1");
    expect(parseMemoId(memoIdOf(create(EnvelopeSchema, { ...base, idempotencyKey: "i" })) ?? "")).toEqual({
      kind: "idempotency",
      target: { type: "T", key: "k" },
      handler: "H",
      idempotencyKey: "i",
    });
    expect(memoIdOf(create(EnvelopeSchema, base))).toBeUndefined();
  });

  it("refuses strings that are not memo ids", () => {
    for (const id of ["", "call", "inv/0", "idem\u0000T\u0000k\u0000H", "memo\u0000x"]) expect(parseMemoId(id)).toBeUndefined();
  });
});

describe("cancellation tokens", () => {
  it.each([
    { target: { type: "shop.v1.Cart", key: "joe" }, messageId: "inv:s0" },
    { target: { type: "shop.v1.Cart", key: "" }, messageId: "k-x/1:s2" },
    { target: { type: "shop.v1.Cart", key: "a|b%20c ✓" }, messageId: "m|%" },
  ])("%j round-trips", (parts) => {
    expect(parseToken(formatToken(parts))).toEqual(parts);
  });

  it("refuses strings that are not tokens, a malformed escape included, without throwing", () => {
    for (const token of ["", "a|b", "a|b|c|d", "|k|m", "t|k|", "t|%E0%A4%A|m", "t|k|%"]) expect(parseToken(token)).toBeUndefined();
  });
});
