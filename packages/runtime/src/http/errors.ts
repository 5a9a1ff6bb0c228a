import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { ShoalError } from "@shoal/sdk";
import { ShardUnavailableError } from "../shard/shard-processor.js";
import { RecordEncodingError, StorageError } from "../storage/storage.js";

/**
 * The one mapping from what the runtime throws to what a client sees (STYLE
 * §4). `context` names the operation (`shop.v1.Cart.AddItem`) and prefixes the
 * message of errors that do not carry a code of their own.
 *
 * | thrown                                  | code                         |
 * | --------------------------------------- | ---------------------------- |
 * | `ConnectError`                          | its own, unchanged           |
 * | `ShoalError`                            | its own                      |
 * | `ShardUnavailableError`                 | `Unavailable` (retry)        |
 * | `StorageError`, `FencedError`           | `Unavailable` (retry)        |
 * | `RecordEncodingError`                   | `InvalidArgument`            |
 * | anything else                           | `Internal`, with its message |
 *
 * A shard that is recovering or moving and a storage that failed are
 * transient: the retry succeeds once they are back. Anything else is a bug or
 * a condition a retry does not change, hence `Internal`.
 */
export function toConnectError(err: unknown, context: string): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof ShoalError) return new ConnectError(err.message, err.code, undefined, undefined, err);
  if (err instanceof ShardUnavailableError) return new ConnectError(err.message, Code.Unavailable, undefined, undefined, err);
  const message = `${context}: ${err instanceof Error ? err.message : String(err)}`;
  if (err instanceof StorageError) return new ConnectError(message, Code.Unavailable, undefined, undefined, err);
  if (err instanceof RecordEncodingError) {
    return new ConnectError(
      `${context}: the message cannot be stored, it was not accepted: ${err.message}`,
      Code.InvalidArgument,
      undefined,
      undefined,
      err,
    );
  }
  return new ConnectError(message, Code.Internal, undefined, undefined, err);
}

/**
 * A Connect interceptor that passes every error a route throws through
 * `toConnectError`, with the route's `package.Service.Method` as context.
 */
export const mapErrors: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (err) {
    throw toConnectError(err, `${req.service.typeName}.${req.method.name}`);
  }
};
