import { describe, expect, it } from "vitest";
import { AccountFunction } from "../../../../examples/bank/src/gen/bank/v1/account_shoal.js";
import { descriptorSetOf } from "../../../../test/support/descriptor-set.js";
import type { RemoteEndpointConfig } from "../config/config.js";
import { createRemoteFunctions, RemoteFunctionsError } from "./remote-functions.js";

const bank = descriptorSetOf(AccountFunction.service.file);
const entry = (fields: Partial<RemoteEndpointConfig>): RemoteEndpointConfig => ({
  path: "functions.remote[0]",
  type: undefined,
  package: undefined,
  url: "http://bank:9000",
  timeoutMs: 1_000,
  maxConcurrent: 4,
  maxBatch: 8,
  invokeMany: { maxRequests: 32, maxBytes: 4 * 1024 * 1024 },
  retry: { maxAttempts: 1, initialDelayMs: 0, maxDelayMs: 0 },
  tls: undefined,
  bearerToken: undefined,
  ...fields,
});
const node = {
  logger: { debug() {}, info() {}, warn() {}, error() {} },
  metrics: { remoteInvokeFailed() {}, remoteInvoked() {} },
  createLimit: () => ({ acquire: async () => {}, release() {} }),
};
const create$ = (endpoints: RemoteEndpointConfig[], descriptors = bank) =>
  createRemoteFunctions({ descriptors, descriptorsSource: "functions.binpb", endpoints }, node);

describe("createRemoteFunctions", () => {
  it("reads a function type from the descriptor set, its handlers, key fields and state, with no code of it", () => {
    const [remote, ...rest] = create$([entry({ package: "bank.v1", url: "http://{service}-{package}:9000/{type}" })]);
    expect(rest).toEqual([]);
    expect(remote?.fn.typeName).toBe("bank.v1.Account");
    expect(remote?.fn.state?.typeName).toBe("bank.v1.AccountState");
    expect([...(remote?.fn.handlers.values() ?? [])].map((h) => [h.name, h.shared, h.keyField?.name])).toEqual([
      ["Deposit", false, "account"],
      ["Withdraw", false, "account"],
      ["Transfer", false, "account"],
      ["Get", true, "account"],
    ]);
    expect(remote?.invoker.endpoint).toBe("http://account-bank.v1:9000/bank.v1.Account");
    expect(remote?.invoker.maxBatch).toBe(8);
    remote?.invoker.close();
  });

  it("prefers an entry for the type over one for its package", () => {
    const [remote] = create$([
      entry({ package: "bank.v1", url: "http://pkg:1" }),
      entry({ type: "bank.v1.Account", url: "http://type:2" }),
    ]);
    expect(remote?.invoker.endpoint).toBe("http://type:2");
    remote?.invoker.close();
  });

  it("refuses an entry that names no function type of the descriptor set, listing those it has", () => {
    expect(() => create$([entry({ package: "shop.v1" })])).toThrow(
      new RemoteFunctionsError(
        "functions.remote[0]: package: shop.v1 names no function type of functions.binpb (function types there: bank.v1.Account); rebuild the descriptor set with that proto, or fix the name",
      ),
    );
  });

  it("refuses a file that is not a descriptor set", () => {
    expect(() => create$([entry({ package: "bank.v1" })], new Uint8Array([0xff, 0xff]))).toThrow(
      /^functions\.binpb: not a descriptor set of the function types \(make one with `buf build -o functions\.binpb`\): /,
    );
  });

  it("names the TLS key whose file cannot be read", () => {
    expect(() =>
      create$([entry({ package: "bank.v1", url: "https://bank", tls: { ca: "/nonexistent/ca.pem", cert: undefined, key: undefined } })]),
    ).toThrow(/^functions\.remote\[0\]\.tls\.ca: cannot read \/nonexistent\/ca\.pem: ENOENT/);
  });
});
