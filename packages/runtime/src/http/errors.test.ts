import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { implement, ShoalError } from "@shoal/sdk";
import { Admin } from "@shoal/sdk/internal";
import { describe, expect, it } from "vitest";
import { GreeterFunction } from "../../../../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { greeter } from "../../../../examples/greeter/src/greeter.js";
import { createRuntime } from "../runtime.js";
import { ShardUnavailableError } from "../shard/shard-processor.js";
import { createMemoryStorage } from "../storage/memory/memory-storage.js";
import { FencedError, RecordEncodingError, StorageError } from "../storage/storage.js";
import { toConnectError } from "./errors.js";

describe("toConnectError", () => {
  const context = "shop.v1.Cart.AddItem";
  it.each([
    ["a ConnectError keeps its code and message", new ConnectError("gone", Code.NotFound), Code.NotFound, "gone"],
    ["a ShoalError keeps its code", new ShoalError(Code.PermissionDenied, "not yours"), Code.PermissionDenied, "not yours"],
    ["a shard not open here is retryable", new ShardUnavailableError("shard 3 is recovering"), Code.Unavailable, "shard 3 is recovering"],
    ["a storage failure is retryable", new StorageError("disk full"), Code.Unavailable, `${context}: disk full`],
    ["a fenced log is retryable", new FencedError("shard 3 moved"), Code.Unavailable, `${context}: shard 3 moved`],
    [
      "a record that cannot be stored is the message's fault",
      new RecordEncodingError("int64 out of range"),
      Code.InvalidArgument,
      `${context}: the message cannot be stored, it was not accepted: int64 out of range`,
    ],
    ["any other error is Internal, with its message", new Error("boom"), Code.Internal, `${context}: boom`],
    ["a thrown non-error is Internal", "just a string", Code.Internal, `${context}: just a string`],
  ])("%s", (_, thrown, code, message) => {
    const err = toConnectError(thrown, context);
    expect(err).toBeInstanceOf(ConnectError);
    expect(err.code).toBe(code);
    expect(err.rawMessage).toBe(message);
  });

  it("returns a ConnectError itself, unchanged", () => {
    const original = new ConnectError("gone", Code.NotFound);
    expect(toConnectError(original, context)).toBe(original);
  });
});

describe("the routes map errors through toConnectError", () => {
  // Before start() no shard is open: every shard answers ShardUnavailableError.
  const runtime = createRuntime({
    functions: [implement(GreeterFunction, greeter)],
    storage: createMemoryStorage(),
    shards: 2,
    logger: "silent",
  });
  const transport = createRouterTransport(runtime.routes);

  it("the admin service answers Unavailable for a shard that is not open, not Internal", async () => {
    const err = await createClient(Admin, transport)
      .getState({ function: GreeterFunction.typeName, key: "ada" })
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect((err as ConnectError).rawMessage).toMatch(/shard \d is not open on this node/);
  });

  it("the ingress answers Unavailable for a shard that is not open", async () => {
    const err = await createClient(GreeterFunction.service, transport)
      .greet({ name: "ada" })
      .catch((e: unknown) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect((err as ConnectError).rawMessage).toMatch(/shard \d is not open on this node/);
  });
});
