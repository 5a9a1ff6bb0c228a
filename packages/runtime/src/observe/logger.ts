import type { Logger } from "@shoal/sdk";
import { type Logger as PinoLogger, pino } from "pino";

/** Log levels the runtime understands. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

/** Structured JSON logs on stderr (pino). */
export function createPinoLogger(level: LogLevel = "info"): PinoLogger {
  return pino({ level, base: undefined }, pino.destination({ dest: 2, sync: false }));
}

/** Adapts pino to the SDK's `Logger` (message first, fields second). */
export function toShoalLogger(logger: PinoLogger): Logger {
  return {
    debug: (message, fields) => logger.debug(fields ?? {}, message),
    info: (message, fields) => logger.info(fields ?? {}, message),
    warn: (message, fields) => logger.warn(fields ?? {}, message),
    error: (message, fields) => logger.error(fields ?? {}, message),
  };
}

/** A logger made on first use: most invocations never log. */
export function lazyLogger(make: () => Logger): Logger {
  let logger: Logger | undefined;
  const get = () => {
    logger ??= make();
    return logger;
  };
  return {
    debug: (m, f) => get().debug(m, f),
    info: (m, f) => get().info(m, f),
    warn: (m, f) => get().warn(m, f),
    error: (m, f) => get().error(m, f),
  };
}
