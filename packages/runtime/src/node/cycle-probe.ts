import type { Logger } from "@shoal/sdk";

/** What a search for call cycles between nodes asks: the hops, and the node that breaks one. */
export interface CycleProbeOptions {
  /** The locked instances `instance` awaits calls to, asked of the node running it. */
  waitsOf(instance: string): Promise<string[]>;
  /** Fails the calls the caller `instance` awaits to `callee` with `cycle`, if they can be taken back. */
  breakCycle(instance: string, callee: string, cycle: string): Promise<boolean>;
  readonly logger: Logger;
  /** Instances visited at most per search (a wait-for graph is small: one edge per locked, waiting instance). Default 256. */
  readonly maxVisited?: number;
}

/**
 * Finds call cycles between chains that cross nodes (A on one node calls B
 * while B on another calls A): each node's wait-for graph (`CallCycles`)
 * holds only the edges of the invocations it runs, so none sees such a cycle
 * when a call is made. The node of every call from a locked instance to a
 * locked one searches, once the call is delivered and its edge recorded,
 * from the callee along the edges the instances' nodes report back to the
 * caller; of the calls closing a cycle, the last one delivered finds it,
 * since every other edge was recorded before. Every node that finds a cycle
 * breaks it at the same call: the one its smallest instance (by id) awaits,
 * so one chain fails, not both, as on one node. Returns the search, which
 * never rejects.
 */
export function createCycleProbe(options: CycleProbeOptions): (from: string, to: string) => Promise<void> {
  const maxVisited = options.maxVisited ?? 256;
  return async (from, to) => {
    try {
      const cycle = await search(from, to);
      if (cycle === undefined) return;
      const first = cycle.indexOf([...cycle].sort()[0] as string);
      const rotated = [...cycle.slice(first), ...cycle.slice(0, first)];
      const [caller, callee] = rotated as [string, string];
      const message = `call cycle: ${[...rotated, caller].join(" -> ")} (each instance is locked awaiting the next)`;
      if (await options.breakCycle(caller, callee, message)) options.logger.info(`broke a ${message}`);
    } catch (err) {
      // A node that cannot be asked now: the search is given up; its calls keep waiting as they would without it.
      options.logger.warn(`searching for a call cycle through ${from} -> ${to} failed`, {
        error: err instanceof Error ? err.message : String(err),
      });
    }
  };

  /** The cycle `from -> to -> ... ` back to `from`, breadth first (its instances, `from` first), or undefined. */
  async function search(from: string, to: string): Promise<string[] | undefined> {
    const parent = new Map<string, string | undefined>([[to, undefined]]);
    const queue = [to];
    for (let visited = 0; visited < maxVisited; visited++) {
      const at = queue.shift();
      if (at === undefined) return undefined;
      for (const next of await options.waitsOf(at)) {
        if (next === from) {
          const path: string[] = [];
          for (let i: string | undefined = at; i !== undefined; i = parent.get(i)) path.unshift(i);
          return [from, ...path];
        }
        if (!parent.has(next)) {
          parent.set(next, at);
          queue.push(next);
        }
      }
    }
    return undefined;
  }
}
