// The examples as remote function endpoints: `npm run serve-functions` in a
// real process, called over h2c as the runtime calls it.

import { connect } from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createEmbeddedInvoker } from "@shoal/runtime/internal";
import {
  CallResultSchema,
  EnvelopeSchema,
  FunctionService,
  type InvokeRequest,
  invokeRequestToProto,
  invokeResponseFromProto,
  type MessageOutcome,
  okReply,
  requestHash,
} from "@shoal/sdk/internal";
import { afterEach, describe, expect, it } from "vitest";
import { AccountStateSchema, BalanceSchema, DepositRequestSchema } from "../examples/bank/src/gen/bank/v1/account_pb.js";
import { AddItemRequestSchema, CheckoutRequestSchema, ViewRequestSchema } from "../examples/shopping-cart/src/gen/shop/v1/cart_pb.js";
import { ReserveResultSchema } from "../examples/shopping-cart/src/gen/shop/v1/inventory_pb.js";
import shop from "../examples/shopping-cart/src/module.js";
import { type Child, repoRoot, start } from "./support/processes.js";

const children: Child[] = [];
afterEach(async () => {
  for (const child of children.splice(0)) {
    if (child.process.exitCode === null) child.process.kill("SIGKILL");
    await child.exited;
  }
});

/**
 * An example's serve-functions script, as `npm run serve-functions` runs it;
 * resolves once it prints where it serves. Not through npm: npm runs it under
 * `sh -c`, which neither passes signals on nor dies with npm's SIGKILL.
 */
async function serveFunctions(example: string, args: string[], env: NodeJS.ProcessEnv = {}) {
  const child = start(process.execPath, ["dist/serve-functions.js", ...args], { cwd: `${repoRoot}examples/${example}`, env });
  children.push(child);
  const [, types, url] = await child.waitFor(/serving shoal\.v1\.FunctionService for (.*) at (http:\/\/\S+)/);
  return { child, types, url: url as string };
}

/** Whether a TCP connection to `url` opens. */
function connectable(url: URL): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(Number(url.port), url.hostname);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

function invoker(url: string, token?: string) {
  const transport = createConnectTransport({
    baseUrl: url,
    httpVersion: "2",
    useBinaryFormat: true,
    interceptors: [
      (next) => (req) => {
        if (token !== undefined) req.header.set("authorization", `Bearer ${token}`);
        return next(req);
      },
    ],
  });
  const client = createClient(FunctionService, transport);
  return async (request: InvokeRequest) => invokeResponseFromProto(await client.invoke(invokeRequestToProto(request)));
}

describe("the examples' serve-functions", () => {
  it("serves the bank's functions on --port, with the bearer token of SHOAL_BEARER_TOKEN, until SIGTERM", async () => {
    const { child, types, url } = await serveFunctions("bank", ["--port", "0"], { SHOAL_BEARER_TOKEN: "bank-token" });
    expect(types).toBe("bank.v1.Account");
    const address = { type: "bank.v1.Account", key: "alice" };
    const deposit = create(EnvelopeSchema, {
      id: "d1",
      target: address,
      handler: "Deposit",
      payload: toBinary(DepositRequestSchema, create(DepositRequestSchema, { account: "alice", amount: 5n, transferId: "t1" })),
    });
    const request = { address, state: undefined, messages: [{ envelope: deposit, journal: [] }] };
    const response = await invoker(url, "bank-token")(request);
    const outcome = response.outcomes[0];
    if (outcome?.status !== "done" || outcome.reply.result.case !== "ok")
      throw new Error(`expected a reply, got ${JSON.stringify(outcome)}`);
    expect(fromBinary(BalanceSchema, outcome.reply.result.value).balance).toBe(5n);
    if (outcome.effects.state.kind !== "write") throw new Error(`expected a state write, got ${outcome.effects.state.kind}`);
    expect(fromBinary(AccountStateSchema, outcome.effects.state.bytes).balance).toBe(5n);

    const refused = await invoker(url)(request).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ConnectError);
    expect((refused as ConnectError).code).toBe(Code.Unauthenticated);

    child.process.kill("SIGTERM");
    expect(await child.exited).toBe(0);
    expect(child.stderr()).toContain(
      '"code":"Unauthenticated","error":"no Authorization header","msg":"shoal.v1.FunctionService.Invoke refused"',
    );
    await expect(connectable(new URL(url))).resolves.toBe(false);
  });

  it("serves the shopping cart's functions on PORT", async () => {
    const { types, url } = await serveFunctions("shopping-cart", [], { PORT: "0" });
    expect(types).toBe("shop.v1.Cart, shop.v1.Inventory, shop.v1.Fraud");
    const address = { type: "shop.v1.Cart", key: "joe" };
    const addItem = create(EnvelopeSchema, {
      id: "a1",
      target: address,
      handler: "AddItem",
      payload: toBinary(AddItemRequestSchema, create(AddItemRequestSchema, { userId: "joe", sku: "tea", quantity: 1 })),
    });
    const response = await invoker(url)({ address, state: undefined, messages: [{ envelope: addItem, journal: [] }] });
    expect(response.outcomes).toMatchObject([
      { status: "suspended", calls: [{ callId: "a1/0", target: { type: "shop.v1.Inventory", key: "tea" }, handler: "Reserve" }] },
    ]);
  });

  it("answers a batch as the embedded invoker does, outcome for outcome", async () => {
    const { url } = await serveFunctions("shopping-cart", ["--port", "0"]);
    const embedded = createEmbeddedInvoker({
      lookup: (type) => shop.implementations.find((i) => i.fn.typeName === type),
      invocationLogger: () => ({ debug() {}, info() {}, warn() {}, error() {} }),
    });
    const address = { type: "shop.v1.Cart", key: "ann" };
    const envelope = (id: string, handler: string, payload: Uint8Array) =>
      create(EnvelopeSchema, { id, target: address, handler, payload });
    const addItem = envelope(
      "a1",
      "AddItem",
      toBinary(AddItemRequestSchema, create(AddItemRequestSchema, { userId: "ann", sku: "tea", quantity: 3 })),
    );
    const first = (await embedded.invoke({ address, state: undefined, messages: [{ envelope: addItem, journal: [] }] })).outcomes[0];
    if (first?.status !== "suspended") throw new Error(`expected a suspension, got ${JSON.stringify(first)}`);
    const call = first.calls[0]!;
    const reserved = create(CallResultSchema, {
      callId: call.callId,
      target: call.target,
      handler: call.handler,
      requestHash: requestHash(call.payload),
      reply: okReply(toBinary(ReserveResultSchema, create(ReserveResultSchema, { reserved: true, available: 7 }))),
    });
    const request = {
      address,
      state: undefined,
      messages: [
        { envelope: addItem, journal: [reserved] },
        { envelope: envelope("v1", "View", toBinary(ViewRequestSchema, create(ViewRequestSchema, { userId: "ann" }))), journal: [] },
        {
          envelope: envelope("c1", "Checkout", toBinary(CheckoutRequestSchema, create(CheckoutRequestSchema, { userId: "ann" }))),
          journal: [],
        },
      ],
    };
    const remote = await invoker(url)(request);
    const local = await embedded.invoke(request);
    expect(remote.outcomes.map((o) => o.status)).toEqual(["done", "done", "suspended"]);
    // `output` is the in-process reply object, which only the embedded invoker gives.
    expect(remote).toEqual({ ...local, outcomes: local.outcomes.map(({ output: _, ...o }: MessageOutcome & { output?: unknown }) => o) });
  });

  it("is the examples' npm script, which exits 1 with a clear message on a port that is not a number", async () => {
    const child = start("npm", ["run", "serve-functions", "--silent", "--", "--port", "http"], { cwd: `${repoRoot}examples/bank` });
    children.push(child);
    expect(await child.exited).toBe(1);
    expect(child.stderr()).toContain('serve-functions: port "http" (--port or PORT) is not a port number: give 0 to 65535');
  });
});
