import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { InvokeRequestSchema, InvokeResponseSchema } from "../gen/shoal/v1/function_pb.js";
import { CallResultSchema, EnvelopeSchema } from "../gen/shoal/v1/protocol_pb.js";
import { errorReply, okReply } from "../invocation.js";
import type { InvokeRequest, InvokeResponse } from "../invoker.js";
import {
  checkFunctionProtocolVersion,
  functionProtocolVersion,
  invokeRequestFromProto,
  invokeRequestToProto,
  invokeResponseFromProto,
  invokeResponseToProto,
} from "./function-protocol.js";

const address = { type: "shop.v1.Cart", key: "joe" };
const bytes = (...b: number[]) => new Uint8Array(b);

/** Through the wire: to proto, to bytes, back. */
const requestRoundTrip = (r: InvokeRequest) =>
  invokeRequestFromProto(fromBinary(InvokeRequestSchema, toBinary(InvokeRequestSchema, invokeRequestToProto(r))));
const responseRoundTrip = (r: InvokeResponse) =>
  invokeResponseFromProto(fromBinary(InvokeResponseSchema, toBinary(InvokeResponseSchema, invokeResponseToProto(r))));

function connectCode(fn: () => unknown): Code | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof ConnectError ? err.code : undefined;
  }
  return undefined;
}

describe("the function protocol's conversion", () => {
  it("carries a request's address, state, messages and journals unchanged", () => {
    const envelope = create(EnvelopeSchema, { id: "m1", target: address, handler: "AddItem", payload: bytes(1, 2) });
    const journal = [create(CallResultSchema, { callId: "m1/0", target: { type: "shop.v1.Stock", key: "a" }, reply: okReply(bytes(9)) })];
    const request: InvokeRequest = {
      address,
      state: bytes(7),
      messages: [
        { envelope, journal },
        { envelope, journal: [] },
      ],
    };
    const back = requestRoundTrip(request);
    expect(back.address).toEqual(address);
    expect(back.state).toEqual(bytes(7));
    expect(back.messages.map((m) => m.envelope.id)).toEqual(["m1", "m1"]);
    expect(back.messages[0]?.envelope.payload).toEqual(bytes(1, 2));
    expect(back.messages[0]?.journal[0]?.callId).toBe("m1/0");
    expect(back.messages[0]?.journal[0]?.reply).toEqual(okReply(bytes(9)));
  });

  it("tells an absent state (a new instance) from an empty one", () => {
    const envelope = create(EnvelopeSchema, { id: "m1", target: address, handler: "AddItem" });
    expect(requestRoundTrip({ address, state: undefined, messages: [{ envelope, journal: [] }] }).state).toBeUndefined();
    expect(requestRoundTrip({ address, state: bytes(), messages: [{ envelope, journal: [] }] }).state).toEqual(bytes());
  });

  it("carries every outcome and effect unchanged", () => {
    const response: InvokeResponse = {
      address,
      outcomes: [
        {
          status: "done",
          reply: okReply(bytes(3)),
          effects: {
            state: { kind: "write", bytes: bytes(4) },
            sends: [{ id: "m1:s0", target: { type: "shop.v1.Mail", key: "" }, handler: "Notify", payload: bytes(5), delayMs: 86_400_000 }],
            cancels: ["tok"],
            egress: [{ egress: "orders", typeName: "shop.v1.OrderPlaced", payload: bytes(6), id: "m1:e0" }],
          },
        },
        {
          status: "done",
          reply: errorReply(Code.NotFound, "no item"),
          effects: { state: { kind: "clear" }, sends: [], cancels: [], egress: [] },
        },
        { status: "done", reply: okReply(bytes()), effects: { state: { kind: "keep" }, sends: [], cancels: [], egress: [] } },
        {
          status: "suspended",
          calls: [{ callId: "m4/0", target: { type: "shop.v1.Stock", key: "a" }, handler: "Reserve", payload: bytes(8) }],
        },
      ],
    };
    expect(responseRoundTrip(response)).toEqual(response);
    const failed: InvokeResponse = { address, outcomes: [{ status: "failed", retryable: false, message: "cannot decode the state" }] };
    expect(responseRoundTrip(failed)).toEqual(failed);
  });

  it("refuses another protocol version with FailedPrecondition naming both versions and what to upgrade", () => {
    expect(() => checkFunctionProtocolVersion(2, "runtime")).toThrow(
      "the runtime sent protocol version 2, this function endpoint speaks version 1: upgrade @shoal/sdk in the function endpoint",
    );
    expect(() => checkFunctionProtocolVersion(2, "endpoint")).toThrow(
      "the endpoint sent protocol version 2, this runtime speaks version 1: upgrade the runtime (@shoal/runtime)",
    );
    expect(() => checkFunctionProtocolVersion(0, "endpoint")).toThrow("sent no protocol version");
    expect(connectCode(() => checkFunctionProtocolVersion(0, "runtime"))).toBe(Code.FailedPrecondition);
    const request = invokeRequestToProto({
      address,
      state: undefined,
      messages: [{ envelope: create(EnvelopeSchema, { id: "m" }), journal: [] }],
    });
    request.protocolVersion = functionProtocolVersion + 1;
    expect(connectCode(() => invokeRequestFromProto(request))).toBe(Code.FailedPrecondition);
    const response = invokeResponseToProto({ address, outcomes: [] });
    response.protocolVersion = functionProtocolVersion + 1;
    expect(connectCode(() => invokeResponseFromProto(response))).toBe(Code.FailedPrecondition);
  });

  it("refuses a malformed request with InvalidArgument and a malformed response with Internal", () => {
    const v = functionProtocolVersion;
    expect(() => invokeRequestFromProto(create(InvokeRequestSchema, { protocolVersion: v, messages: [{}] }))).toThrow(
      "invalid request: no address",
    );
    expect(() => invokeRequestFromProto(create(InvokeRequestSchema, { protocolVersion: v, address }))).toThrow("no messages to run");
    expect(connectCode(() => invokeRequestFromProto(create(InvokeRequestSchema, { protocolVersion: v, address, messages: [{}] })))).toBe(
      Code.InvalidArgument,
    );
    const response = (outcomes: object[]) => create(InvokeResponseSchema, { protocolVersion: v, address, outcomes });
    expect(() => invokeResponseFromProto(response([{}]))).toThrow("invalid response from the endpoint: outcome 0: no status");
    expect(() => invokeResponseFromProto(response([{ status: { case: "done", value: {} } }]))).toThrow("outcome 0: done without a reply");
    expect(() => invokeResponseFromProto(response([{ status: { case: "suspended", value: {} } }]))).toThrow("suspended without calls");
    const failed = { status: { case: "failed", value: { retryable: true } } };
    expect(() => invokeResponseFromProto(response([failed, failed]))).toThrow("outcome 0 is failed but is not the last");
    expect(connectCode(() => invokeResponseFromProto(create(InvokeResponseSchema, { protocolVersion: v })))).toBe(Code.Internal);
  });
});
