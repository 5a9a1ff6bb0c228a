// The storage conformance suite, for authors of storage backends: a backend in
// any package runs it in its own vitest tests (vitest is an optional peer
// dependency of @shoal/runtime, needed only by this entry point).

export type { ShardStorageCapabilities, ShardStorageUnderTest } from "./storage/shard-storage.conformance.js";
export { describeShardStorageConformance } from "./storage/shard-storage.conformance.js";
