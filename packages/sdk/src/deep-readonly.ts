/**
 * A read-only view of a protobuf message shape, all the way down: what a shared
 * handler sees of its state. Writing through it is a type error.
 */
export type DeepReadonly<T> = T extends
  | string
  | number
  | boolean
  | bigint
  | symbol
  | undefined
  | null
  | Uint8Array
  // biome-ignore lint/complexity/noBannedTypes: functions stay callable
  | Function
  ? T
  : T extends ReadonlyArray<infer E>
    ? ReadonlyArray<DeepReadonly<E>>
    : T extends object
      ? { readonly [K in keyof T]: DeepReadonly<T[K]> }
      : T;
