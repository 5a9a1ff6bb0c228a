import { spawn } from "node:child_process";
import { afterEach, beforeEach, describe, expect, it, onTestFinished, vi } from "vitest";
import { createDeadlines } from "./deadlines.js";

const expired = (what: string) => () => new Error(`${what} did not answer in time`);

/** A promise settled from outside. */
function pending<T>() {
  let resolve: (value: T) => void = () => {};
  let reject: (error: Error) => void = () => {};
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe("deadlines", () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "performance"] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("settles as the work does before its deadline", async () => {
    const deadlines = createDeadlines(1000);
    const ok = pending<string>();
    const failing = pending<string>();
    const makeError = vi.fn(expired("x"));
    const a = deadlines.race(ok.promise, makeError);
    const b = deadlines.race(failing.promise, makeError);
    ok.resolve("done");
    failing.reject(new Error("handler broke"));
    await expect(a).resolves.toBe("done");
    await expect(b).rejects.toThrow("handler broke");
    expect(makeError).not.toHaveBeenCalled();
  });

  it("rejects each hung operation at its own deadline, and ignores the work's late answer", async () => {
    const deadlines = createDeadlines(1000);
    const first = deadlines.race(new Promise<string>(() => {}), expired("first"));
    const firstSettled = vi.fn();
    first.then(firstSettled, firstSettled);
    await vi.advanceTimersByTimeAsync(400);
    const late = pending<string>();
    const second = deadlines.race(late.promise, expired("second"));
    const secondSettled = vi.fn();
    second.then(secondSettled, secondSettled);
    await vi.advanceTimersByTimeAsync(600);
    await expect(first).rejects.toThrow("first did not answer in time");
    expect(secondSettled).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(400);
    await expect(second).rejects.toThrow("second did not answer in time");
    late.resolve("too late");
    await expect(second).rejects.toThrow("second did not answer in time");
    // Nothing pending: the timer is not armed again.
    expect(vi.getTimerCount()).toBe(0);
  });

  it("serves many operations, concurrent or one after another, with one timer", async () => {
    const deadlines = createDeadlines(1000);
    const timers = vi.spyOn(globalThis, "setTimeout");
    const works = Array.from({ length: 100 }, () => pending<number>());
    const races = works.map((w) => deadlines.race(w.promise, expired("op")));
    const hung = deadlines.race(new Promise<number>(() => {}), expired("hung"));
    hung.catch(() => {});
    works.forEach((w, i) => {
      w.resolve(i);
    });
    expect(await Promise.all(races)).toEqual(works.map((_, i) => i));
    for (let i = 0; i < 10; i++) await expect(deadlines.race(Promise.resolve(i), expired("one"))).resolves.toBe(i);
    await vi.advanceTimersByTimeAsync(1000);
    await expect(hung).rejects.toThrow("hung did not answer in time");
    expect(timers.mock.calls.length).toBe(1);
  });
});

describe("deadlines in a process", () => {
  it("do not keep the process alive once nothing is pending", { timeout: 20_000 }, async () => {
    // An hour-long deadline whose operation settled at once: the process must exit on its own.
    const script = `
      const { createDeadlines } = await import(${JSON.stringify(new URL("../../dist/invoker/deadlines.js", import.meta.url).href)});
      const deadlines = createDeadlines(3_600_000);
      await deadlines.race(Promise.resolve(1), () => new Error("late"));
      await deadlines.race(Promise.resolve(2), () => new Error("late"));
      console.log("settled");
    `;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    // A child the timer keeps alive would outlive a failed test by an hour.
    onTestFinished(() => {
      child.kill("SIGKILL");
    });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      out += chunk;
    });
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    expect({ code, out: out.trim() }).toEqual({ code: 0, out: "settled" });
  });
});
