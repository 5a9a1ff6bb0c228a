// Running functions
export { createRuntime } from "./runtime.js";
export type { Runtime, RuntimeOptions } from "./runtime.js";
export { listen } from "./server.js";
export type { ListenOptions, RuntimeServer } from "./server.js";
export { createLocalStorage } from "./storage/local-storage.js";
export type { LocalStorageOptions } from "./storage/local-storage.js";
/** The memory store: for unit tests only, it keeps nothing across restarts. */
export { createMemoryStorage } from "./storage/memory-storage.js";
export { startNode, loadModule } from "./run-node.js";
export type { RunningNode, StartNodeOptions } from "./run-node.js";
export { installProcessGuard } from "./process-guard.js";
export { loadConfig, validateConfig, ConfigError } from "./config.js";
export type { ShoalConfig } from "./config.js";
export { createStdoutEgress } from "./egress.js";
export type { Egress } from "./egress.js";
export { systemClock, createManualClock } from "./clock.js";
export type { Clock, ManualClock } from "./clock.js";
export type { RetryPolicy } from "./shard-processor.js";
export type { LogLevel } from "./logger.js";

// for runtime and plugin authors
export { StorageError, FencedError, RecordEncodingError, encodeRecords } from "./storage/storage.js";
export type { AppendResult, RecoveredShard, SequencedRecord, ShardLog, StorageBackend, StorageStats } from "./storage/storage.js";
