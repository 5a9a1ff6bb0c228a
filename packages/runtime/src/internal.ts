// Internals for other storage backends, invokers and tests of the runtime.
// Not a public API: it changes without notice.

export { registerIngress } from "./ingress.js";
export type { Semaphore, Slot } from "./semaphore.js";
export { createSemaphore, createSlot } from "./semaphore.js";
export { shardOf } from "./shard-hash.js";
export type { RegisteredFunction, ReplyWaiter, ShardHost } from "./shard-processor.js";
export { memoIdOf, ShardProcessor, ShardUnavailableError } from "./shard-processor.js";
export { controlHandlers, instanceId, ShardState } from "./shard-state.js";
