/** A counting semaphore: bounds how many invocations run handler code at once. */
export interface Semaphore {
  acquire(): Promise<void>;
  release(): void;
  readonly inUse: number;
}

export function createSemaphore(limit: number): Semaphore {
  let inUse = 0;
  const waiting: Array<() => void> = [];
  return {
    get inUse() {
      return inUse;
    },
    acquire() {
      if (inUse < limit) {
        inUse++;
        return Promise.resolve();
      }
      return new Promise<void>((resolve) => waiting.push(resolve));
    },
    release() {
      const next = waiting.shift();
      if (next !== undefined) next();
      else inUse--;
    },
  };
}

/**
 * One invocation's hold on a semaphore slot. It gives the slot back while the
 * invocation awaits calls (the callee may need a slot: holding it could
 * deadlock) and takes it again after. Both methods are idempotent.
 */
export interface Slot {
  acquire(): Promise<void>;
  release(): void;
}

export function createSlot(semaphore: Semaphore): Slot {
  let holding = false;
  let acquiring: Promise<void> | undefined;
  return {
    acquire() {
      if (holding) return Promise.resolve();
      acquiring ??= semaphore.acquire().then(() => {
        holding = true;
        acquiring = undefined;
      });
      return acquiring;
    },
    release() {
      if (!holding) return;
      holding = false;
      semaphore.release();
    },
  };
}
