import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it, vi } from "vitest";
import { ShoalError } from "./shoal-error.js";

// A second copy of the module, as tsx gives the handlers of `shoal dev src/module.ts`.
async function secondCopy(): Promise<typeof ShoalError> {
  vi.resetModules();
  const copy = (await import("./shoal-error.js")) as { ShoalError: typeof ShoalError };
  expect(copy.ShoalError).not.toBe(ShoalError);
  return copy.ShoalError;
}

describe("ShoalError across copies of @shoal/sdk", () => {
  it("recognizes a ShoalError made by another copy, and from() keeps its code and message", async () => {
    const Foreign = await secondCopy();
    const err: unknown = new Foreign(Code.InvalidArgument, "deposit needs a positive amount");
    expect(err instanceof ShoalError).toBe(true);
    const from = ShoalError.from(err);
    expect(from.code).toBe(Code.InvalidArgument);
    expect(from.message).toBe("deposit needs a positive amount");
    expect(new ShoalError(Code.NotFound, "x") instanceof Foreign).toBe(true);
  });

  it("does not take other errors for a ShoalError", () => {
    expect(new Error("boom") instanceof ShoalError).toBe(false);
    expect(Object.assign(new Error("boom"), { name: "ShoalError", code: Code.Internal }) instanceof ShoalError).toBe(false);
    expect(new ConnectError("boom", Code.Unavailable) instanceof ShoalError).toBe(false);
    expect((null as unknown) instanceof ShoalError).toBe(false);
    expect(ShoalError.from(new ConnectError("gone", Code.Unavailable)).code).toBe(Code.Unavailable);
  });

  it("keeps the ordinary check for a subclass", () => {
    class Refused extends ShoalError {}
    expect(new Refused(Code.PermissionDenied, "no") instanceof Refused).toBe(true);
    expect(new Refused(Code.PermissionDenied, "no") instanceof ShoalError).toBe(true);
    expect(new ShoalError(Code.PermissionDenied, "no") instanceof Refused).toBe(false);
  });
});
