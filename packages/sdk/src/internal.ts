// Internals shared by @shoal/runtime, @shoal/testing and protoc-gen-shoal.
// Not a public API: it changes without notice.

export * from "./gen/shoal/v1/admin_pb.js";
export * from "./gen/shoal/v1/options_pb.js";
export * from "./gen/shoal/v1/protocol_pb.js";
export * from "./gen/shoal/v1/storage_pb.js";
export * from "./ids.js";
export * from "./invocation.js";
