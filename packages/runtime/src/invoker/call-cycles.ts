/**
 * The one call-cycle detector of a node. An exclusive handler holds its
 * instance's lock while it awaits a call; a call into an instance that is
 * locked awaiting the caller (directly, up its call chain, or through other
 * chains) would wait forever. Instances are named `type/key`.
 */
export class CallCycles {
  /** Locked instance -> the locked instances its invocation awaits calls to (with counts: calls in parallel). */
  private readonly waits = new Map<string, Map<string, number>>();

  /**
   * The cycle a call from `from` to `to` would close, or undefined.
   * `chain` holds the instances locked awaiting `from`'s invocation, outermost
   * first (the envelope's call chain); `graph` says whether `from` itself is
   * locked while it waits, so that other chains may wait for it.
   */
  find(chain: readonly string[], from: string, to: string, graph: boolean): string | undefined {
    if (to === from || chain.includes(to)) {
      return `call cycle: ${[...chain, from, to].join(" -> ")} (the instance is locked awaiting this call)`;
    }
    if (!graph) return undefined;
    const path = this.pathFrom(to, from, new Set([to]));
    return path !== undefined ? `call cycle: ${[from, ...path].join(" -> ")} (each instance is locked awaiting the next)` : undefined;
  }

  /** Records that locked `from` awaits a call to locked `to`; the returned function removes that edge again. */
  wait(from: string, to: string): () => void {
    let edges = this.waits.get(from);
    if (edges === undefined) {
      edges = new Map();
      this.waits.set(from, edges);
    }
    edges.set(to, (edges.get(to) ?? 0) + 1);
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      const n = (edges.get(to) ?? 1) - 1;
      if (n > 0) edges.set(to, n);
      else edges.delete(to);
      if (edges.size === 0 && this.waits.get(from) === edges) this.waits.delete(from);
    };
  }

  /** The locked instances `from`'s invocation awaits calls to (a probe from another node follows them). */
  awaitsOf(from: string): string[] {
    return [...(this.waits.get(from)?.keys() ?? [])];
  }

  /** A path `at -> ... -> goal` along wait edges, `at` first. */
  private pathFrom(at: string, goal: string, seen: Set<string>): string[] | undefined {
    if (at === goal) return [at];
    for (const next of this.waits.get(at)?.keys() ?? []) {
      if (seen.has(next)) continue;
      seen.add(next);
      const rest = this.pathFrom(next, goal, seen);
      if (rest !== undefined) return [at, ...rest];
    }
    return undefined;
  }
}
