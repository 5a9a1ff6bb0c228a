// A node with embedded and remote functions side by side: the bank in an
// endpoint (serveFunctions on a real h2c socket), the greeter in process.
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { implement, module } from "@shoal/sdk";
import { serveFunctions } from "@shoal/sdk/serve";
import { afterEach, describe, expect, it } from "vitest";
import { account } from "../../../examples/bank/src/account.js";
import { Account } from "../../../examples/bank/src/gen/bank/v1/account_pb.js";
import { AccountFunction } from "../../../examples/bank/src/gen/bank/v1/account_shoal.js";
import { Greeter } from "../../../examples/greeter/src/gen/greeter/v1/greeter_pb.js";
import { GreeterFunction } from "../../../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { greeter } from "../../../examples/greeter/src/greeter.js";
import { descriptorSetOf } from "../../../test/support/descriptor-set.js";
import type { RemoteEndpointConfig } from "./config/config.js";
import { listen } from "./http/server.js";
import { createRuntime } from "./runtime.js";
import { createMemoryStorage } from "./storage/memory/memory-storage.js";

const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

const bankEndpoint = (url: string): RemoteEndpointConfig => ({
  path: "functions.remote[0]",
  type: "bank.v1.Account",
  package: undefined,
  url,
  timeoutMs: 5_000,
  maxConcurrent: 4,
  maxBatch: 4,
  invokeMany: { maxRequests: 32, maxBytes: 4 * 1024 * 1024 },
  retry: { maxAttempts: 2, initialDelayMs: 10, maxDelayMs: 10 },
  tls: undefined,
  bearerToken: undefined,
});
const remote = (url: string) => ({
  descriptors: descriptorSetOf(AccountFunction.service.file),
  descriptorsSource: "bank.binpb",
  endpoints: [bankEndpoint(url)],
});

describe("a node with remote functions", () => {
  it("runs a remote function type in its endpoint and an embedded one in process, side by side", async () => {
    let invokes = 0;
    const handler = serveFunctions(module(implement(AccountFunction, account)), {
      logger: { debug() {}, info() {}, warn() {}, error() {} },
    }).node;
    const endpoint = http2.createServer((req, res) => {
      invokes++;
      handler(req, res);
    });
    await new Promise<void>((resolve) => endpoint.listen(0, "127.0.0.1", resolve));
    closers.push(() => new Promise<void>((resolve) => endpoint.close(() => resolve())));
    const endpointUrl = `http://127.0.0.1:${(endpoint.address() as AddressInfo).port}`;

    const runtime = createRuntime({
      functions: [implement(GreeterFunction, greeter)],
      remote: remote(endpointUrl),
      storage: createMemoryStorage(),
      shards: 2,
      logger: "silent",
    });
    await runtime.start();
    const server = await listen(runtime, { port: 0 });
    closers.push(() => runtime.close());
    closers.push(() => server.close());

    const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" });
    const bank = createClient(Account, transport);
    expect((await bank.deposit({ account: "alice", amount: 5n, transferId: "t1" })).balance).toBe(5n);
    expect((await bank.transfer({ account: "alice", to: "bob", amount: 2n, transferId: "t2" })).balance).toBe(3n);
    expect((await bank.get({ account: "bob" })).balance).toBe(2n);
    expect(invokes).toBeGreaterThanOrEqual(4);
    const before = invokes;
    const greeting = await createClient(Greeter, transport).greet({ name: "joe" });
    expect(greeting.greeting).toContain("joe");
    expect(invokes).toBe(before);
  });

  it("refuses a function type that is both in the module and served by an endpoint", () => {
    expect(() =>
      createRuntime({
        functions: [implement(AccountFunction, account)],
        remote: remote("http://127.0.0.1:1"),
        storage: createMemoryStorage(),
        logger: "silent",
      }),
    ).toThrow("bank.v1.Account is both in the module and served by a remote endpoint (http://127.0.0.1:1); keep one");
  });
});
