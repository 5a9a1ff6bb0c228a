/** Deadlines of one length for many concurrent operations. */
export interface Deadlines {
  /**
   * Settles as `work` does, or rejects with `expired()` once the deadline's
   * length has passed first. `expired` is called only then.
   */
  race<T>(work: Promise<T>, expired: () => Error): Promise<T>;
}

interface Entry {
  readonly at: number;
  settled: boolean;
  readonly reject: (error: Error) => void;
  readonly expired: () => Error;
}

/**
 * Deadlines of `timeoutMs` on one timer. A timer and a `Promise.race` for
 * every invocation cost more than some handlers do; deadlines of one length
 * expire in the order they were set, so one timer armed for the oldest
 * unsettled one serves them all. It stays armed when nothing is pending, for
 * the next operation, but then no longer keeps the process alive.
 */
export function createDeadlines(timeoutMs: number, now: () => number = () => performance.now()): Deadlines {
  const queue: Entry[] = [];
  let head = 0;
  let pending = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  // Whether the timer keeps the process alive: only while something is pending.
  let referenced = false;

  const settle = (entry: Entry): boolean => {
    if (entry.settled) return false;
    entry.settled = true;
    pending--;
    if (pending === 0) {
      queue.length = 0;
      head = 0;
      if (referenced) {
        timer?.unref();
        referenced = false;
      }
    }
    return true;
  };

  const expire = () => {
    timer = undefined;
    referenced = false;
    const t = now();
    while (head < queue.length) {
      const entry = queue[head] as Entry;
      if (!entry.settled && entry.at > t) break;
      head++;
      // The last pending one empties the queue.
      if (settle(entry)) entry.reject(entry.expired());
    }
    if (pending === 0) return;
    // Drop the settled front now and then, not on every expiry.
    if (head > 1024 && head * 2 > queue.length) {
      queue.splice(0, head);
      head = 0;
    }
    timer = setTimeout(expire, Math.max(1, (queue[head] as Entry).at - t));
    referenced = true;
  };

  return {
    race<T>(work: Promise<T>, expired: () => Error): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        queue.push({ at: now() + timeoutMs, settled: false, reject, expired });
        const entry = queue[queue.length - 1] as Entry;
        pending++;
        if (timer === undefined) timer = setTimeout(expire, timeoutMs);
        else if (!referenced) timer.ref();
        referenced = true;
        work.then(
          (value) => {
            if (settle(entry)) resolve(value);
          },
          (error: unknown) => {
            if (settle(entry)) reject(error);
          },
        );
      });
    },
  };
}
