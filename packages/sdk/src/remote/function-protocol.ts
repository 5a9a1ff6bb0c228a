// Conversion between the remote function protocol (shoal/v1/function.proto)
// and the invoker types, used by both sides: the runtime's remote invoker and
// a function endpoint (`serveFunctions`). Decoding is strict: bytes that
// parse as protobuf but are not a well-formed message of this protocol are
// refused here, so neither side acts on a peer's garbage.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Address } from "../function-type.js";
import {
  AwaitedCallSchema,
  EffectsSchema,
  EgressEffectSchema,
  InvokeMessageSchema,
  InvokeRequestSchema,
  InvokeResponseSchema,
  MessageOutcomeSchema,
  type InvokeRequest as ProtoInvokeRequest,
  type InvokeResponse as ProtoInvokeResponse,
  type MessageOutcome as ProtoMessageOutcome,
  type StateEffect as ProtoStateEffect,
  SendEffectSchema,
  StateEffect_ClearSchema,
  StateEffect_KeepSchema,
  StateEffectSchema,
} from "../gen/shoal/v1/function_pb.js";
import { AddressSchema, type Address as ProtoAddress } from "../gen/shoal/v1/protocol_pb.js";
import type { Effects, InvokeRequest, InvokeResponse, MessageOutcome, StateEffect } from "../invoker.js";

/**
 * The version of `shoal.v1.FunctionService` this SDK speaks, sent in every
 * request and response. Raised on any change an older peer would misread.
 */
export const functionProtocolVersion = 1;

/**
 * Refuses a peer's protocol version other than {@link functionProtocolVersion}
 * with a FailedPrecondition error that names both versions and which side to
 * upgrade. `peer` is the side that sent `received`.
 */
export function checkFunctionProtocolVersion(received: number, peer: "runtime" | "endpoint"): void {
  if (received === functionProtocolVersion) return;
  const self = peer === "runtime" ? "this function endpoint" : "this runtime";
  const sent = received === 0 ? "no protocol version (an older or non-Shoal peer)" : `protocol version ${received}`;
  const newer = received > functionProtocolVersion ? peer : peer === "runtime" ? "endpoint" : "runtime";
  const upgrade = newer === "runtime" ? "upgrade @shoal/sdk in the function endpoint" : "upgrade the runtime (@shoal/runtime)";
  throw new ConnectError(
    `shoal.v1.FunctionService: the ${peer} sent ${sent}, ${self} speaks version ${functionProtocolVersion}: ${upgrade} so both speak the same version`,
    Code.FailedPrecondition,
  );
}

/** The protocol message for an invoker request (the runtime side). In-process fields (`decoded`, `encodeReply`) are not sent. */
export function invokeRequestToProto(request: InvokeRequest): ProtoInvokeRequest {
  return create(InvokeRequestSchema, {
    protocolVersion: functionProtocolVersion,
    address: toProtoAddress(request.address),
    state: request.state,
    messages: request.messages.map((m) => create(InvokeMessageSchema, { envelope: m.envelope, journal: [...m.journal] })),
  });
}

/**
 * The invoker request in a protocol message (the endpoint side). Throws a
 * ConnectError: FailedPrecondition for another protocol version,
 * InvalidArgument for a malformed request.
 */
export function invokeRequestFromProto(message: ProtoInvokeRequest): InvokeRequest {
  checkFunctionProtocolVersion(message.protocolVersion, "runtime");
  const invalid = (what: string) => new ConnectError(`shoal.v1.FunctionService.Invoke: invalid request: ${what}`, Code.InvalidArgument);
  const address = message.address;
  if (address === undefined || address.type === "") throw invalid("no address (the function type is empty)");
  if (message.messages.length === 0) throw invalid("no messages to run");
  const messages = message.messages.map((m, i) => {
    if (m.envelope === undefined) throw invalid(`message ${i} has no envelope`);
    return { envelope: m.envelope, journal: m.journal };
  });
  return { address: fromProtoAddress(address), state: message.state, messages };
}

/** The protocol message for an invoker response (the endpoint side). `output` (in process only) is not sent. */
export function invokeResponseToProto(response: InvokeResponse): ProtoInvokeResponse {
  return create(InvokeResponseSchema, {
    protocolVersion: functionProtocolVersion,
    address: toProtoAddress(response.address),
    outcomes: response.outcomes.map(outcomeToProto),
  });
}

/**
 * The invoker response in a protocol message (the runtime side). Throws a
 * ConnectError: FailedPrecondition for another protocol version, Internal
 * for a malformed response (the endpoint answered garbage). Whether the
 * address is the request's is the caller's check.
 */
export function invokeResponseFromProto(message: ProtoInvokeResponse): InvokeResponse {
  checkFunctionProtocolVersion(message.protocolVersion, "endpoint");
  const invalid = (what: string) =>
    new ConnectError(`shoal.v1.FunctionService.Invoke: invalid response from the endpoint: ${what}`, Code.Internal);
  if (message.address === undefined || message.address.type === "") throw invalid("no address (the function type is empty)");
  const outcomes = message.outcomes.map((o, i) => outcomeFromProto(o, (what) => invalid(`outcome ${i}: ${what}`)));
  const last = outcomes.findIndex((o) => o.status !== "done");
  if (last !== -1 && last !== outcomes.length - 1) throw invalid(`outcome ${last} is ${outcomes[last]?.status} but is not the last`);
  return { address: fromProtoAddress(message.address), outcomes };
}

function outcomeToProto(outcome: MessageOutcome): ProtoMessageOutcome {
  switch (outcome.status) {
    case "done":
      return create(MessageOutcomeSchema, {
        status: { case: "done", value: { reply: outcome.reply, effects: effectsToProto(outcome.effects) } },
      });
    case "suspended": {
      const calls = outcome.calls.map((c) =>
        create(AwaitedCallSchema, { callId: c.callId, target: toProtoAddress(c.target), handler: c.handler, payload: c.payload }),
      );
      return create(MessageOutcomeSchema, { status: { case: "suspended", value: { calls } } });
    }
    case "failed":
      return create(MessageOutcomeSchema, {
        status: { case: "failed", value: { retryable: outcome.retryable, message: outcome.message } },
      });
  }
}

function outcomeFromProto(outcome: ProtoMessageOutcome, invalid: (what: string) => Error): MessageOutcome {
  const status = outcome.status;
  switch (status.case) {
    case "done": {
      const reply = status.value.reply;
      if (reply === undefined || reply.result.case === undefined) throw invalid("done without a reply");
      const effects = status.value.effects;
      if (effects === undefined) return { status: "done", reply, effects: noEffects };
      return {
        status: "done",
        reply,
        effects: {
          state: stateFromProto(effects.state),
          sends: effects.sends.map((s, i) => ({
            id: s.id,
            target: targetFromProto(s.target, () => invalid(`send ${i} has no target`)),
            handler: s.handler,
            payload: s.payload,
            delayMs: Number(s.delayMs),
          })),
          cancels: effects.cancels,
          egress: effects.egress.map((e) => ({ egress: e.egress, typeName: e.typeName, payload: e.payload, id: e.id })),
        },
      };
    }
    case "suspended": {
      if (status.value.calls.length === 0) throw invalid("suspended without calls");
      const calls = status.value.calls.map((c, i) => ({
        callId: c.callId,
        target: targetFromProto(c.target, () => invalid(`call ${i} has no target`)),
        handler: c.handler,
        payload: c.payload,
      }));
      return { status: "suspended", calls };
    }
    case "failed":
      return { status: "failed", retryable: status.value.retryable, message: status.value.message };
    default:
      throw invalid("no status (done, suspended or failed)");
  }
}

function effectsToProto(effects: Effects) {
  return create(EffectsSchema, {
    state: stateToProto(effects.state),
    sends: effects.sends.map((s) =>
      create(SendEffectSchema, {
        id: s.id,
        target: toProtoAddress(s.target),
        handler: s.handler,
        payload: s.payload,
        delayMs: BigInt(s.delayMs),
      }),
    ),
    cancels: [...effects.cancels],
    egress: effects.egress.map((e) => create(EgressEffectSchema, { egress: e.egress, typeName: e.typeName, payload: e.payload, id: e.id })),
  });
}

function stateToProto(state: StateEffect): ProtoStateEffect {
  switch (state.kind) {
    case "keep":
      return create(StateEffectSchema, { change: { case: "keep", value: create(StateEffect_KeepSchema) } });
    case "write":
      return create(StateEffectSchema, { change: { case: "write", value: state.bytes } });
    case "clear":
      return create(StateEffectSchema, { change: { case: "clear", value: create(StateEffect_ClearSchema) } });
  }
}

function stateFromProto(state: ProtoStateEffect | undefined): StateEffect {
  switch (state?.change.case) {
    case "write":
      return { kind: "write", bytes: state.change.value };
    case "clear":
      return { kind: "clear" };
    default:
      return { kind: "keep" };
  }
}

function toProtoAddress(address: Address): ProtoAddress {
  return create(AddressSchema, { type: address.type, key: address.key });
}

function fromProtoAddress(address: ProtoAddress): Address {
  return { type: address.type, key: address.key };
}

function targetFromProto(address: ProtoAddress | undefined, invalid: () => Error): Address {
  if (address === undefined || address.type === "") throw invalid();
  return fromProtoAddress(address);
}

const noEffects: Effects = { state: { kind: "keep" }, sends: [], cancels: [], egress: [] };
