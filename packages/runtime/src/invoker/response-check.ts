import type { InvokeRequest, InvokeResponse } from "./invoker.js";

/** Why an invoker's answer cannot be used: nothing of it may commit. */
export interface InvalidResponse {
  /** For metrics: `wrong_instance` or `outcome_count`. */
  readonly reason: "wrong_instance" | "outcome_count";
  readonly message: string;
}

/**
 * The one check of an invoker's answer against its request, made before any
 * outcome of it is used: it must be for the instance asked for (effects for
 * another instance are refused), and hold one outcome per message that ran:
 * at least one, at most one per message, and fewer only when the last one
 * suspended or failed (the invoker stops there).
 */
export function checkInvokeResponse(request: InvokeRequest, response: InvokeResponse): InvalidResponse | undefined {
  const want = request.address;
  const got = response.address;
  if (got?.type !== want.type || got.key !== want.key) {
    return {
      reason: "wrong_instance",
      message: `the invoker answered for instance ${got?.type}/${got?.key}, not ${want.type}/${want.key}; its effects are refused (a bug in the invoker: it must answer for the instance it was given)`,
    };
  }
  const sent = request.messages.length;
  const outcomes = response.outcomes;
  const last = outcomes[outcomes.length - 1];
  const stoppedEarly = outcomes.slice(0, -1).some((o) => o.status !== "done");
  if (last === undefined || outcomes.length > sent || (outcomes.length < sent && last.status === "done") || stoppedEarly) {
    return {
      reason: "outcome_count",
      message: `the invoker answered ${outcomes.length} outcome(s) for ${sent} message(s) of ${want.type}/${want.key}; it must answer one per message, stopping only after one that suspends or fails`,
    };
  }
  return undefined;
}
