// The storage conformance suite, for authors of storage backends: a backend in
// any package runs it in its own vitest tests (vitest is an optional peer
// dependency of @shoal/runtime, needed only by this entry point).

export type { StorageCapabilities, StorageUnderTest } from "./storage/storage.conformance.js";
export { describeStorageConformance } from "./storage/storage.conformance.js";
