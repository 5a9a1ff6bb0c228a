// Internals for other storage backends, invokers and tests of the runtime.
// Not a public API: it changes without notice.

export { mapErrors, toConnectError } from "./http/errors.js";
export { registerIngress } from "./http/ingress.js";
export { CallCycles } from "./invoker/call-cycles.js";
export { createEmbeddedInvoker, type EmbeddedInvokerOptions } from "./invoker/embedded-invoker.js";
export type {
  AwaitedCall,
  Effects,
  EgressEffect,
  InvokeMessage,
  InvokeRequest,
  InvokeResponse,
  Invoker,
  MessageOutcome,
  SendEffect,
  StateEffect,
} from "./invoker/invoker.js";
export { shardOf } from "./protocol/shard-hash.js";
export type { Semaphore, Slot } from "./shard/semaphore.js";
export { createSemaphore, createSlot } from "./shard/semaphore.js";
export type { RegisteredFunction, ReplyAddress, ShardHost } from "./shard/shard-processor.js";
export { ShardProcessor, ShardUnavailableError } from "./shard/shard-processor.js";
export { controlHandlers, ShardState } from "./shard/shard-state.js";
