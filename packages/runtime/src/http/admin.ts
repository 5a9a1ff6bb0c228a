import { fromBinary, toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import { Admin } from "@shoal/sdk/internal";
import { defaults } from "../config/defaults.js";
import type { NodeRuntime } from "../node/runtime.js";
import { mapErrors } from "./errors.js";

/**
 * Serves `shoal.v1.Admin`: status, instance state, instance keys and dead
 * letters, for `shoal status`, `shoal state` and `shoal dead-letters`.
 */
export function registerAdmin(router: ConnectRouter, runtime: NodeRuntime): void {
  function functionNamed(name: string, stateful = true) {
    const registered = runtime.functions.get(name);
    if (registered === undefined) {
      const known = [...runtime.functions.keys()].sort().join(", ");
      throw new ConnectError(`no function type "${name}" runs here (known: ${known})`, Code.NotFound);
    }
    if (stateful && registered.fn.state === undefined)
      throw new ConnectError(`${name} is stateless: it has no instances`, Code.FailedPrecondition);
    return registered.fn;
  }
  const admin: ServiceImpl<typeof Admin> = {
    status() {
      const storage = runtime.storageStats();
      return {
        node: runtime.nodeId,
        shards: runtime.shards,
        functions: [...runtime.functions.keys()].sort(),
        shardStatus: runtime.status().map((s) => ({
          shard: s.shard,
          epoch: s.epoch,
          sequence: s.sequence,
          instances: s.instances,
          pending: s.pending,
          outbox: s.outbox,
          memos: s.memos,
        })),
        storageGroups: BigInt(storage?.groups ?? 0),
        storageRecords: BigInt(storage?.records ?? 0),
        storageBytes: BigInt(storage?.bytes ?? 0),
      };
    },
    getState(req) {
      const fn = functionNamed(req.function);
      if (req.key === "") throw new ConnectError("key is empty", Code.InvalidArgument);
      const bytes = runtime.stateBytesOf(fn.typeName, req.key);
      if (bytes === undefined || fn.state === undefined) return { found: false };
      return { found: true, stateJson: toJsonString(fn.state, fromBinary(fn.state, bytes)) };
    },
    listInstances(req) {
      const fn = functionNamed(req.function);
      const limit = req.limit === 0 ? defaults.adminListLimit : Math.min(req.limit, 10_000);
      const keys = runtime
        .keysOf(fn.typeName)
        .filter((k) => k > req.after)
        .sort();
      return { keys: keys.slice(0, limit), more: keys.length > limit };
    },
    listDeadLetters(req) {
      if (req.function !== "") functionNamed(req.function, false);
      const limit = req.limit === 0 ? defaults.adminListLimit : Math.min(req.limit, 10_000);
      const letters = runtime
        .deadLetters()
        .filter(({ letter }) => req.function === "" || letter.target?.type === req.function)
        .sort((a, b) => Number(a.letter.deadAtMs - b.letter.deadAtMs));
      return {
        deadLetters: letters.slice(-limit).map(({ shard, letter }) => ({
          shard,
          messageId: letter.envelopeId,
          function: letter.target?.type ?? "",
          key: letter.target?.key ?? "",
          handler: letter.handler,
          code: letter.error !== undefined ? codeName(letter.error.code) : "",
          error: letter.error?.message ?? "",
          deadAtMs: letter.deadAtMs,
          requestJson: requestJson(letter.target?.type ?? "", letter.handler, letter.payload),
        })),
        more: letters.length > limit,
      };
    },
  };
  router.service(Admin, admin, { interceptors: [mapErrors] });

  /** The request as canonical JSON, or "" when its handler is unknown here or the bytes do not decode. */
  function requestJson(type: string, handler: string, payload: Uint8Array): string {
    const input = runtime.functions.get(type)?.fn.handlers.get(handler)?.method.input;
    if (input === undefined) return "";
    try {
      return toJsonString(input, fromBinary(input, payload));
    } catch {
      return "";
    }
  }
}

/** "invalid_argument" for Code.InvalidArgument, as Connect's JSON names codes. */
function codeName(code: number): string {
  const name = Code[code];
  return name === undefined ? String(code) : name.replace(/[A-Z]/g, (c, i: number) => (i === 0 ? c.toLowerCase() : `_${c.toLowerCase()}`));
}
