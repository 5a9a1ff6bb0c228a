// The bytes of a shard's log and snapshots are a format a newer runtime must
// read. These records were encoded before the invocation protocol's messages
// moved from storage.proto to protocol.proto; they must decode to the same
// values and encode to the same bytes.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AddressSchema,
  CallResultSchema,
  EnvelopeSchema,
  FailureSchema,
  LogRecordSchema,
  OutboxSourceSchema,
  ReplySchema,
  ReplyToSchema,
  ShardSnapshotSchema,
} from "@shoal/sdk/internal";
import { describe, expect, it } from "vitest";

const envelope = {
  id: "inv-1/0",
  target: { type: "bank.v1.Account", key: "alice" },
  handler: "Deposit",
  payload: new Uint8Array([8, 5]),
  replyTo: {
    kind: {
      case: "call" as const,
      value: { caller: { type: "bank.v1.Transfer", key: "t1" }, invocationId: "inv-1", node: "n1", shard: 3 },
    },
  },
  deliverAtMs: 17n,
  caller: { type: "bank.v1.Transfer", key: "t1" },
  callId: "inv-1/0",
  source: { shard: 3, sequence: 9n },
  callChain: ["bank.v1.Transfer/t1"],
  traceparent: "00-ab-cd-01",
  acceptedAtMs: 1700000000000n,
  shard: 2,
};

const logRecords = [
  {
    bytes:
      "CrABCq0BCgdpbnYtMS8wEhgKD2JhbmsudjEuQWNjb3VudBIFYWxpY2UaB0RlcG9zaXQiAggFKicSJQoWChBiYW5rLnYxLlRyYW5zZmVyEgJ0MRIFaW52LTEaAm4xIAM4EUIWChBiYW5rLnYxLlRyYW5zZmVyEgJ0MUoHaW52LTEvMFIECAMQCVoTYmFuay52MS5UcmFuc2Zlci90MWILMDAtYWItY2QtMDFogNCV/7wxcAIoBQ==",
    record: create(LogRecordSchema, { kind: { case: "input", value: { envelope } }, writtenAtMs: 5n }),
  },
  {
    bytes: "CigKJgoDcmVxEgsKBmcudjEuRxIBaxoFR3JlZXQqCwoJCgJuMRIDcmVx",
    record: create(LogRecordSchema, {
      kind: {
        case: "input",
        value: {
          envelope: {
            id: "req",
            target: { type: "g.v1.G", key: "k" },
            handler: "Greet",
            replyTo: { kind: { case: "ingress", value: { node: "n1", request: "req" } } },
          },
        },
      },
    }),
  },
  {
    bytes: "GkYKBWludi0xEjcKB2ludi0xLzASGAoPYmFuay52MS5BY2NvdW50EgVhbGljZRoHRGVwb3NpdCIDAQIDKgQKAggBGgQIARAE",
    record: create(LogRecordSchema, {
      kind: {
        case: "callResult",
        value: {
          invocationId: "inv-1",
          result: {
            callId: "inv-1/0",
            target: { type: "bank.v1.Account", key: "alice" },
            handler: "Deposit",
            requestHash: new Uint8Array([1, 2, 3]),
            reply: { result: { case: "ok", value: new Uint8Array([8, 1]) } },
          },
          source: { shard: 1, sequence: 4n },
        },
      },
    }),
  },
  {
    bytes:
      "Eo0CCgVpbnYtMRqyAQgBEq0BCgdpbnYtMS8wEhgKD2JhbmsudjEuQWNjb3VudBIFYWxpY2UaB0RlcG9zaXQiAggFKicSJQoWChBiYW5rLnYxLlRyYW5zZmVyEgJ0MRIFaW52LTEaAm4xIAM4EUIWChBiYW5rLnYxLlRyYW5zZmVyEgJ0MUoHaW52LTEvMFIECAMQCVoTYmFuay52MS5UcmFuc2Zlci90MWILMDAtYWItY2QtMDFogNCV/7wxcAIyKAoMY2FsbABpbnYtMS8wEgEJGggSBggJEgJubyBjKgYKAWESAWIyAUhaJQoBeBIGCgFhEgFiGgFIIgEBKgYKAWMSAWQyCAgNEgRib29tOAM=",
    record: create(LogRecordSchema, {
      kind: {
        case: "commit",
        value: {
          consumed: ["inv-1"],
          memos: [
            {
              id: "call\u0000inv-1/0",
              requestHash: new Uint8Array([9]),
              reply: { result: { case: "error", value: { code: 9, message: "no" } } },
              expiresAtMs: 99n,
              target: { type: "a", key: "b" },
              handler: "H",
            },
          ],
          outbox: [{ sequence: 1n, envelope }],
          deadLetters: [
            {
              envelopeId: "x",
              target: { type: "a", key: "b" },
              handler: "H",
              payload: new Uint8Array([1]),
              caller: { type: "c", key: "d" },
              error: { code: 13, message: "boom" },
              deadAtMs: 3n,
            },
          ],
        },
      },
    }),
  },
];

const snapshot = {
  bytes:
    "CAIQByKtAQoHaW52LTEvMBIYCg9iYW5rLnYxLkFjY291bnQSBWFsaWNlGgdEZXBvc2l0IgIIBSonEiUKFgoQYmFuay52MS5UcmFuc2ZlchICdDESBWludi0xGgJuMSADOBFCFgoQYmFuay52MS5UcmFuc2ZlchICdDFKB2ludi0xLzBSBAgDEAlaE2JhbmsudjEuVHJhbnNmZXIvdDFiCzAwLWFiLWNkLTAxaIDQlf+8MXACQiIKBWludi0xEhkKB2ludi0xLzASBgoBdBIBaxoBSCoDCgEB",
  snapshot: create(ShardSnapshotSchema, {
    shard: 2,
    sequence: 7n,
    pending: [envelope],
    journals: [
      {
        invocationId: "inv-1",
        results: [
          {
            callId: "inv-1/0",
            target: { type: "t", key: "k" },
            handler: "H",
            reply: { result: { case: "ok", value: new Uint8Array([1]) } },
          },
        ],
      },
    ],
  }),
};

describe("the storage record format", () => {
  it.each(logRecords.map((r, i) => [i, r] as const))(
    "log record %i written before decodes the same and encodes to the same bytes",
    (_, r) => {
      const bytes = new Uint8Array(Buffer.from(r.bytes, "base64"));
      expect(fromBinary(LogRecordSchema, bytes)).toEqual(r.record);
      expect(Buffer.from(toBinary(LogRecordSchema, r.record)).toString("base64")).toBe(r.bytes);
    },
  );

  it("a snapshot written before decodes the same and encodes to the same bytes", () => {
    const bytes = new Uint8Array(Buffer.from(snapshot.bytes, "base64"));
    expect(fromBinary(ShardSnapshotSchema, bytes)).toEqual(snapshot.snapshot);
    expect(Buffer.from(toBinary(ShardSnapshotSchema, snapshot.snapshot)).toString("base64")).toBe(snapshot.bytes);
  });

  it("keeps the invocation protocol's messages in protocol.proto, apart from the storage records, under their full names", () => {
    for (const schema of [AddressSchema, EnvelopeSchema, ReplyToSchema, OutboxSourceSchema, ReplySchema, FailureSchema, CallResultSchema]) {
      expect(schema.file.name).toBe("shoal/v1/protocol");
      expect(schema.typeName).toBe(`shoal.v1.${schema.name}`);
    }
    expect(LogRecordSchema.file.name).toBe("shoal/v1/storage");
    expect(LogRecordSchema.file.dependencies.map((f) => f.name)).toContain("shoal/v1/protocol");
  });
});
