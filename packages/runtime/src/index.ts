// Running functions
export { createRuntime } from "./runtime.js";
export type { Runtime } from "./runtime.js";
export type { RuntimeOptions } from "./node/runtime.js";
export { listen } from "./http/server.js";
export type { ListenOptions, RuntimeServer } from "./http/server.js";
export { createLocalShardStorage as createLocalStorage } from "./storage/local/lmdb-storage.js";
export type { LocalShardStorageOptions as LocalStorageOptions } from "./storage/local/lmdb-storage.js";
/** The memory store: for unit tests only, it keeps nothing across restarts. */
export { createMemoryStorage } from "./storage/memory/memory-storage.js";
export { startNode, loadModule } from "./run-node.js";
export type { ModuleImporter, RunningNode, StartNodeOptions } from "./run-node.js";
export { serveConfig, serveUntilSignal } from "./serve.js";
export type { ServeConfigOptions, ServeOptions } from "./serve.js";
export { installProcessGuard } from "./observe/process-guard.js";
export { loadConfig, validateConfig, ConfigError } from "./config/config.js";
export type { RemoteEndpointConfig, ShoalConfig } from "./config/config.js";
export type { RemoteFunctionsOptions } from "./invoker/remote-functions.js";
export { defaults } from "./config/defaults.js";
export { createStdoutEgress } from "./egress/egress.js";
export type { Egress } from "./egress/egress.js";
export { systemClock, createManualClock } from "./shard/clock.js";
export type { Clock, ManualClock } from "./shard/clock.js";
export type { RetryPolicy } from "./shard/shard-processor.js";
export type { LogLevel } from "./observe/logger.js";
// several nodes: shard ownership, the directory of owners, the transport between nodes
export { allShards, createShardOwnership } from "./node/ownership.js";
export type { ShardOwnership } from "./node/ownership.js";
export { createInProcessTransport, createMemoryDirectory } from "./node/router.js";
export type { Delivery, NodeEndpoint, NodeTransport, ReplyOutcome, ShardDirectory } from "./node/router.js";

// for runtime and plugin authors
export { StorageError, FencedError, RecordEncodingError, encodeRecords } from "./storage/storage.js";
export { shardTables } from "./storage/shard-store.js";
export type {
  RangeOptions,
  ShardStorage,
  ShardStore,
  ShardTable,
  StorageStats,
  TableChange,
  TableEntry,
  WriteResult,
} from "./storage/shard-store.js";
