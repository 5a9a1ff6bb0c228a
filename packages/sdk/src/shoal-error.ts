import { Code, ConnectError } from "@connectrpc/connect";

/**
 * A terminal handler error: it is not retried, and the caller receives it with
 * its code and message (a Connect error over the wire, a rejected promise from
 * `ctx.call`).
 *
 * Any other error a handler throws is treated as transient: the invocation is
 * retried with backoff, and after the configured attempts the caller receives
 * `Code.Internal`.
 *
 * @example
 * if (!ok.reserved) throw new ShoalError(Code.FailedPrecondition, `out of ${req.sku}`);
 */
export class ShoalError extends Error {
  override name = "ShoalError";

  constructor(
    /** The Connect code the caller sees. */
    readonly code: Code,
    message: string,
  ) {
    super(message);
  }

  /**
   * Turns a reason into a ShoalError: a ShoalError is returned as is, a
   * ConnectError keeps its code and raw message, anything else becomes
   * `Code.Internal` (or `fallbackCode`).
   */
  static from(reason: unknown, fallbackCode: Code = Code.Internal): ShoalError {
    if (reason instanceof ShoalError) return reason;
    if (reason instanceof ConnectError) return new ShoalError(reason.code, reason.rawMessage);
    if (reason instanceof Error) return new ShoalError(fallbackCode, reason.message);
    return new ShoalError(fallbackCode, String(reason));
  }
}
