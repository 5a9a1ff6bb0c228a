import { fromBinary, toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { Admin } from "@shoal/sdk/internal";
import type { Runtime } from "./runtime.js";

/** Serves `shoal.v1.Admin`: status, instance state and instance keys, for `shoal status` and `shoal state`. */
export function registerAdmin(router: ConnectRouter, runtime: Runtime): void {
  function functionNamed(name: string) {
    const registered = runtime.functions.get(name);
    if (registered === undefined) {
      const known = [...runtime.functions.keys()].sort().join(", ");
      throw new ConnectError(`no function type "${name}" runs here (known: ${known})`, Code.NotFound);
    }
    if (registered.fn.state === undefined) throw new ConnectError(`${name} is stateless: it has no instances`, Code.FailedPrecondition);
    return registered.fn;
  }
  router.service(Admin, {
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
      const limit = req.limit === 0 ? 100 : Math.min(req.limit, 10_000);
      const keys = runtime
        .keysOf(fn.typeName)
        .filter((k) => k > req.after)
        .sort();
      return { keys: keys.slice(0, limit), more: keys.length > limit };
    },
  });
}
