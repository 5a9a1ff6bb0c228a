import type { Logger } from "@shoal/sdk";

/** What the guard writes first on each line it logs, for operators and tests to look for. */
export const processGuardMessage = "shoal: an error escaped every handler; the node keeps serving";

/**
 * Keeps a node serving when a promise rejects with no handler or a callback
 * throws outside any invocation: logs the error (a bug in the runtime or in
 * code a handler left running) instead of letting Node end the process and
 * every instance with it. The runtime itself fails a bad message on its own,
 * so this is a last line of defence. State stays safe: what is durable is
 * the shard logs, which a restart replays. Installed by `shoal dev` and
 * `shoal serve`; call it in your own entry point when you use `startNode`.
 * Returns a function that removes the guard.
 */
export function installProcessGuard(logger: Logger): () => void {
  const report = (kind: string) => (err: unknown) => {
    logger.error(`${processGuardMessage} (${kind})`, {
      error: err instanceof Error ? (err.stack ?? err.message) : String(err),
    });
  };
  const onRejection = report("unhandled rejection");
  const onException = report("uncaught exception");
  process.on("unhandledRejection", onRejection);
  process.on("uncaughtException", onException);
  return () => {
    process.off("unhandledRejection", onRejection);
    process.off("uncaughtException", onException);
  };
}
