// Internals shared by @shoal/runtime, @shoal/testing and protoc-gen-shoal.
// Not a public API: it changes without notice.

export * from "./gen/shoal/v1/admin_pb.js";
export * from "./gen/shoal/v1/cluster_pb.js";
// As a namespace: its message names are those of the invoker types below.
export * as functionProto from "./gen/shoal/v1/function_pb.js";
export { FunctionService } from "./gen/shoal/v1/function_pb.js";
export * from "./gen/shoal/v1/options_pb.js";
export * from "./gen/shoal/v1/protocol_pb.js";
export * from "./gen/shoal/v1/storage_pb.js";
export * from "./ids.js";
export * from "./invocation.js";
export * from "./invoke-batch.js";
export type * from "./invoker.js";
export * from "./remote/function-protocol.js";
// The Connect unary handler in front of connect-node, shared with @shoal/runtime's ingress
// (types only from node:, so this entry still loads where no node: modules exist).
export type {
  ConnectUnaryOptions,
  ConnectUnaryRoute,
  HeaderReader,
  HeaderWriter,
  NodeRequest,
  NodeResponse,
} from "./serve/connect-unary.js";
export { createConnectUnaryHandler } from "./serve/connect-unary.js";
