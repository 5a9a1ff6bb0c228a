import type { AnyFunctionType, HandlersOf } from "./function-type.js";

/** A function type bound to its handler implementations. */
export interface Implementation {
  readonly fn: AnyFunctionType;
  readonly handlers: object;
}

/**
 * Binds a function type to its handlers. The handlers object must satisfy the
 * generated interface (`CartHandlers`): a missing handler or a wrong return
 * type is a type error here.
 *
 * @example
 * export default module(implement(CartFunction, cart), implement(InventoryFunction, inventory));
 */
export function implement<F extends AnyFunctionType>(fn: F, handlers: HandlersOf<F>): Implementation {
  return { fn, handlers: handlers as object };
}

/** A set of implementations that `shoal dev` and `serveFunctions` run. */
export interface ShoalModule {
  readonly kind: "shoal.module";
  readonly implementations: readonly Implementation[];
}

/**
 * Bundles implementations into a module: the default export of the file given
 * to `shoal dev`.
 */
export function module(...implementations: Implementation[]): ShoalModule {
  const seen = new Set<string>();
  for (const impl of implementations) {
    if (seen.has(impl.fn.typeName)) throw new Error(`module: ${impl.fn.typeName} is implemented twice`);
    seen.add(impl.fn.typeName);
  }
  return { kind: "shoal.module", implementations };
}

/** Whether a value is a module made by `module(...)`. */
export function isModule(value: unknown): value is ShoalModule {
  return typeof value === "object" && value !== null && (value as { kind?: unknown }).kind === "shoal.module";
}
