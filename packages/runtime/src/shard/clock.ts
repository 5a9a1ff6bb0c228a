/** Time as the runtime sees it; tests replace it to control timers. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  /** Calls `fn` once `ms` have passed; returns a cancel function. */
  schedule(ms: number, fn: () => void): () => void;
}

/** The wall clock. */
export const systemClock: Clock = {
  now: () => Date.now(),
  schedule(ms, fn) {
    // setTimeout's limit is 2^31-1 ms; longer timers re-arm.
    const max = 2_147_483_647;
    let handle: NodeJS.Timeout;
    const arm = (remaining: number) => {
      handle = setTimeout(() => (remaining > max ? arm(remaining - max) : fn()), Math.min(remaining, max));
      handle.unref?.();
    };
    arm(Math.max(0, ms));
    return () => clearTimeout(handle);
  },
};

/** A clock that moves only when told to: for tests of delays and TTLs. */
export interface ManualClock extends Clock {
  /** Moves time forward, firing due timers in time order. */
  advance(ms: number): Promise<void>;
  /** Moves time to `epochMs`. */
  set(epochMs: number): Promise<void>;
}

/** Creates a manual clock starting at `startMs` (default: now). */
export function createManualClock(startMs: number = Date.now()): ManualClock {
  let now = startMs;
  let nextId = 0;
  const timers = new Map<number, { at: number; fn: () => void }>();
  async function moveTo(target: number) {
    for (;;) {
      let due: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of timers) if (entry[1].at <= target && (due === undefined || entry[1].at < due[1].at)) due = entry;
      if (due === undefined) break;
      timers.delete(due[0]);
      now = Math.max(now, due[1].at);
      due[1].fn();
      // Let the fired work run before the next timer, as real time would.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    now = Math.max(now, target);
  }
  return {
    now: () => now,
    schedule(ms, fn) {
      if (ms <= 0) {
        // Already due (a timer recovered after its time): fire soon, as the wall clock does.
        const handle = setImmediate(fn);
        return () => clearImmediate(handle);
      }
      const id = nextId++;
      timers.set(id, { at: now + Math.max(0, ms), fn });
      return () => timers.delete(id);
    },
    advance: (ms) => moveTo(now + ms),
    set: (epochMs) => moveTo(epochMs),
  };
}
