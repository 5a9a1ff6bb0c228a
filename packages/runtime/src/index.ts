export type { Clock, ManualClock } from "./clock.js";
export { createManualClock, systemClock } from "./clock.js";
export type { ShoalConfig } from "./config.js";
export { ConfigError, loadConfig, validateConfig } from "./config.js";
export type { Egress } from "./egress.js";
export { createStdoutEgress } from "./egress.js";
export type { LogLevel } from "./logger.js";
export type { RunningNode, StartNodeOptions } from "./run-node.js";
export { loadModule, startNode } from "./run-node.js";
export type { Runtime, RuntimeOptions } from "./runtime.js";
export { createRuntime } from "./runtime.js";
export type { ListenOptions, RuntimeServer } from "./server.js";
export { listen } from "./server.js";
export type { RetryPolicy } from "./shard-processor.js";
export type { LocalStorageOptions } from "./storage/local-storage.js";
export { createLocalStorage } from "./storage/local-storage.js";
/** The memory store: for unit tests only, it keeps nothing across restarts. */
export { createMemoryStorage } from "./storage/memory-storage.js";
export type { AppendResult, RecoveredShard, SequencedRecord, ShardLog, StorageBackend } from "./storage/storage.js";
// for runtime and plugin authors
export { FencedError, StorageError } from "./storage/storage.js";
