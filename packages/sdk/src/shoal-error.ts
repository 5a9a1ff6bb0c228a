import { Code, ConnectError } from "@connectrpc/connect";

// A registered symbol is the same in every copy of this module: `shoal dev`
// loads a .ts module through tsx, which gives the handlers a second copy of
// @shoal/sdk, and their errors must still be recognized as terminal.
const brand = Symbol.for("@shoal/sdk/ShoalError");

/**
 * A terminal handler error: it is not retried, and the caller receives it with
 * its code and message (a Connect error over the wire, a rejected promise from
 * `ctx.call`).
 *
 * Any other error a handler throws is treated as transient: the invocation is
 * retried with backoff, and after the configured attempts the caller receives
 * `Code.Internal`.
 *
 * `instanceof ShoalError` also holds for a ShoalError made by another copy of
 * `@shoal/sdk` (a bundled or separately loaded one).
 *
 * @example
 * if (!ok.reserved) throw new ShoalError(Code.FailedPrecondition, `out of ${req.sku}`);
 */
export class ShoalError extends Error {
  override name = "ShoalError";

  static {
    Object.defineProperty(ShoalError.prototype, brand, { value: true });
  }

  /**
   * True for a ShoalError of any copy of `@shoal/sdk`. A subclass keeps the
   * ordinary prototype check.
   */
  static override [Symbol.hasInstance](value: unknown): boolean {
    // biome-ignore lint/complexity/noThisInStatic: subclasses inherit this method; `this` is the class on the right of instanceof.
    if (this !== ShoalError) return Function.prototype[Symbol.hasInstance].call(this, value);
    return (
      typeof value === "object" &&
      value !== null &&
      (value as { [brand]?: unknown })[brand] === true &&
      typeof (value as { code?: unknown }).code === "number"
    );
  }

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
