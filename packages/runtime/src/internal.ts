// Internals for other storage backends, invokers and tests of the runtime.
// Not a public API: it changes without notice.

export { mapErrors, toConnectError } from "./http/errors.js";
export { registerIngress } from "./http/ingress.js";
export { CallCycles } from "./invoker/call-cycles.js";
export { createEmbeddedInvoker, type EmbeddedInvokerOptions } from "./invoker/embedded-invoker.js";
export type * from "./invoker/invoker.js";
export { createRemoteFunctions, type RemoteFunction, RemoteFunctionsError } from "./invoker/remote-functions.js";
export { createRemoteInvoker, type RemoteInvoker, type RemoteInvokerOptions } from "./invoker/remote-invoker.js";
export { checkInvokeResponse, type InvalidResponse } from "./invoker/response-check.js";
export { shardOf } from "./protocol/shard-hash.js";
export type { Semaphore, Slot } from "./shard/semaphore.js";
export { createSemaphore, createSlot } from "./shard/semaphore.js";
export type { RegisteredFunction, ReplyAddress, ShardHost } from "./shard/shard-processor.js";
export { ShardProcessor, ShardUnavailableError } from "./shard/shard-processor.js";
export { controlHandlers, ShardState } from "./shard/shard-state.js";
export {
  type LegacyUpgrade,
  type LegacyUpgradeOptions,
  legacyFolderPrefix,
  upgradeLegacyDirectory,
} from "./storage/local/legacy/legacy-upgrade.js";
// The local backend by its own name (public as createLocalStorage).
export { createLocalShardStorage, type LocalShardStorageOptions } from "./storage/local/lmdb-storage.js";
export { restoreBatches, restoreChanges, snapshotOf } from "./storage/shard-snapshot.js";
export type {
  RangeOptions,
  ShardStorage,
  ShardStore,
  ShardTable,
  TableChange,
  TableEntry,
  WriteResult,
} from "./storage/shard-store.js";
export { maxKeyBytes } from "./storage/shard-store.js";
