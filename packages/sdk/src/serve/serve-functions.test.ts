// A function endpoint over real sockets (h2c and HTTP/1.1) and through its
// fetch handler with real Request/Response objects, called as the runtime
// calls it: a Connect client and the function protocol's conversion module.

import * as http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { universalClientResponseFromFetch } from "@connectrpc/connect/protocol";
import { createTransport } from "@connectrpc/connect/protocol-connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cart } from "../../../../examples/shopping-cart/src/cart.js";
import {
  AddItemRequestSchema,
  CartStateSchema,
  CartViewSchema,
  ViewRequestSchema,
} from "../../../../examples/shopping-cart/src/gen/shop/v1/cart_pb.js";
import { CartFunction } from "../../../../examples/shopping-cart/src/gen/shop/v1/cart_shoal.js";
import {
  InventoryStateSchema,
  ReserveRequestSchema,
  ReserveResultSchema,
} from "../../../../examples/shopping-cart/src/gen/shop/v1/inventory_pb.js";
import { InventoryFunction } from "../../../../examples/shopping-cart/src/gen/shop/v1/inventory_shoal.js";
import { inventory } from "../../../../examples/shopping-cart/src/inventory.js";
import { FunctionService, InvokeRequestSchema } from "../gen/shoal/v1/function_pb.js";
import { CallResultSchema, EnvelopeSchema } from "../gen/shoal/v1/protocol_pb.js";
import { okReply, requestHash } from "../invocation.js";
import type { InvokeMessage, InvokeRequest, InvokeResponse } from "../invoker.js";
import { implement, module } from "../module.js";
import { functionsFetchHandler } from "../remote/function-endpoint.js";
import { functionProtocolVersion, invokeRequestToProto, invokeResponseFromProto } from "../remote/function-protocol.js";
import { type FunctionServer, listenFunctions } from "./listen-functions.js";

const token = "s3cret";
// The shopping cart, with a view that throws something other than a ShoalError.
const functions = module(
  implement(CartFunction, {
    ...cart,
    view() {
      throw new Error("the view broke");
    },
  }),
  implement(InventoryFunction, inventory),
);
const warnings: string[] = [];
const logger = {
  debug() {},
  info() {},
  warn: (m: string, f?: Record<string, unknown>) => warnings.push(`${m} ${JSON.stringify(f)}`),
  error() {},
};

const joe = { type: CartFunction.typeName, key: "joe" };
const addItem = (id: string, journal: InvokeMessage["journal"] = []): InvokeMessage => ({
  envelope: create(EnvelopeSchema, {
    id,
    target: joe,
    handler: "AddItem",
    payload: toBinary(AddItemRequestSchema, create(AddItemRequestSchema, { userId: "joe", sku: "tea", quantity: 2 })),
  }),
  journal,
});
const message = (id: string, handler: string, target = joe): InvokeMessage => ({
  envelope: create(EnvelopeSchema, {
    id,
    target,
    handler,
    payload: toBinary(ViewRequestSchema, create(ViewRequestSchema, { userId: "joe" })),
  }),
  journal: [],
});

const withHeaders =
  (headers: Record<string, string>): Interceptor =>
  (next) =>
  (req) => {
    for (const [name, value] of Object.entries(headers)) req.header.set(name, value);
    return next(req);
  };

type FunctionClient = Client<typeof FunctionService>;
const invoke = async (client: FunctionClient, request: InvokeRequest): Promise<InvokeResponse> =>
  invokeResponseFromProto(await client.invoke(invokeRequestToProto(request)));

async function connectError(promise: Promise<unknown>): Promise<ConnectError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof ConnectError)) throw new Error(`expected a ConnectError, got ${String(err)}`);
  return err;
}

/** The behaviour every way of serving must show; `transport` reaches an endpoint of `functions` that requires `token`. */
function invokeCases(setup: () => { transport: (headers?: Record<string, string>) => Transport }) {
  const client = (headers: Record<string, string> = { authorization: `Bearer ${token}` }) =>
    createClient(FunctionService, setup().transport(headers));

  it("runs a handler to a suspension on its call, then to the state write and send once the call's result is in its journal", async () => {
    const first = await invoke(client(), { address: joe, state: undefined, messages: [addItem("m1")] });
    expect(first.address).toEqual(joe);
    expect(first.outcomes).toHaveLength(1);
    const suspended = first.outcomes[0];
    if (suspended?.status !== "suspended") throw new Error(`expected a suspension, got ${JSON.stringify(suspended)}`);
    expect(suspended.calls).toMatchObject([
      { callId: "m1/0", target: { type: InventoryFunction.typeName, key: "tea" }, handler: "Reserve" },
    ]);
    expect(fromBinary(ReserveRequestSchema, suspended.calls[0]!.payload)).toMatchObject({ sku: "tea", quantity: 2 });

    const call = suspended.calls[0]!;
    const result = create(CallResultSchema, {
      callId: call.callId,
      target: call.target,
      handler: call.handler,
      requestHash: requestHash(call.payload),
      reply: okReply(toBinary(ReserveResultSchema, create(ReserveResultSchema, { reserved: true, available: 8 }))),
    });
    const second = await invoke(client(), { address: joe, state: undefined, messages: [addItem("m1", [result])] });
    const done = second.outcomes[0];
    if (done?.status !== "done" || done.reply.result.case !== "ok") throw new Error(`expected a reply, got ${JSON.stringify(done)}`);
    expect(fromBinary(CartViewSchema, done.reply.result.value).items).toEqual({ tea: 2 });
    if (done.effects.state.kind !== "write") throw new Error(`expected a state write, got ${done.effects.state.kind}`);
    expect(fromBinary(CartStateSchema, done.effects.state.bytes).items).toEqual({ tea: 2 });
    expect(done.effects.sends).toMatchObject([{ id: "m1:s0", target: joe, handler: "RemindAbandoned", delayMs: 24 * 3600_000 }]);
  });

  it("runs a batch in order on the state each message leaves, and stops at the first failure", async () => {
    const state = toBinary(CartStateSchema, create(CartStateSchema, { items: { tea: 1 } }));
    const inventoryOf = { type: InventoryFunction.typeName, key: "tea" };
    const restock = (id: string, quantity: number): InvokeMessage => ({
      envelope: create(EnvelopeSchema, {
        id,
        target: inventoryOf,
        handler: "Reserve",
        payload: toBinary(ReserveRequestSchema, create(ReserveRequestSchema, { sku: "tea", quantity })),
      }),
      journal: [],
    });
    const stock = (available: number) => toBinary(InventoryStateSchema, create(InventoryStateSchema, { available }));
    const batch = await invoke(client(), {
      address: inventoryOf,
      state: stock(5),
      messages: [restock("r1", 2), restock("r2", 2), restock("r3", 2)],
    });
    const results = batch.outcomes.map((o) =>
      o.status === "done" && o.reply.result.case === "ok" ? fromBinary(ReserveResultSchema, o.reply.result.value) : o,
    );
    expect(results).toMatchObject([
      { reserved: true, available: 3 },
      { reserved: true, available: 1 },
      { reserved: false, available: 1 },
    ]);

    const failing = await invoke(client(), { address: joe, state, messages: [message("v1", "View"), message("v2", "View")] });
    expect(failing.outcomes).toEqual([{ status: "failed", retryable: true, message: "the view broke" }]);
    expect(warnings.at(-1)).toBe(
      'invocation failed {"function":"shop.v1.Cart","key":"joe","handler":"View","invocation":"v1","retryable":true,"error":"the view broke"}',
    );
  });

  it("answers an unknown function type or handler with an Unimplemented reply, as embedded mode does", async () => {
    const nobody = { type: "shop.v1.Nobody", key: "x" };
    const response = await invoke(client(), { address: nobody, state: undefined, messages: [message("u1", "Anything", nobody)] });
    expect(response.outcomes).toMatchObject([
      { status: "done", reply: { result: { case: "error", value: { code: Code.Unimplemented } } } },
    ]);
    const unknownHandler = await invoke(client(), { address: joe, state: undefined, messages: [message("u2", "Shred")] });
    expect(unknownHandler.outcomes).toMatchObject([
      { status: "done", reply: { result: { case: "error", value: { message: "unknown function or handler shop.v1.Cart.Shred" } } } },
    ]);
  });

  it("refuses another protocol version with FailedPrecondition naming both", async () => {
    const request = invokeRequestToProto({ address: joe, state: undefined, messages: [message("x", "View")] });
    request.protocolVersion = functionProtocolVersion + 1;
    const err = await connectError(client().invoke(request));
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(err.rawMessage).toContain("the runtime sent protocol version 2, this function endpoint speaks version 1");
    expect(warnings.at(-1)).toContain('"code":"FailedPrecondition"');
  });

  it("refuses a missing or wrong bearer token with Unauthenticated", async () => {
    const request = invokeRequestToProto({ address: joe, state: undefined, messages: [message("x", "View")] });
    const wrong = await connectError(client({ authorization: "Bearer guess" }).invoke(request));
    expect(wrong.code).toBe(Code.Unauthenticated);
    expect(wrong.rawMessage).toContain("a wrong bearer token");
    const missing = await connectError(client({}).invoke(request));
    expect(missing.code).toBe(Code.Unauthenticated);
    expect(missing.rawMessage).toContain("no Authorization header");
  });

  it("refuses a request without messages with InvalidArgument", async () => {
    const err = await connectError(
      client().invoke(create(InvokeRequestSchema, { protocolVersion: functionProtocolVersion, address: joe })),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toBe("shoal.v1.FunctionService.Invoke: invalid request: no messages to run");
  });
}

describe.each(["2", "1.1"] as const)("a function endpoint over HTTP/%s", (httpVersion) => {
  let server: FunctionServer;
  beforeAll(async () => {
    server = await listenFunctions(functions, {
      port: 0,
      host: "127.0.0.1",
      httpVersion,
      bearerToken: token,
      logger,
      maxRequestBytes: 64 * 1024,
    });
  });
  afterAll(() => server.close());
  const transport = (headers: Record<string, string> = {}) =>
    createConnectTransport({ baseUrl: server.url, httpVersion, useBinaryFormat: true, interceptors: [withHeaders(headers)] });
  invokeCases(() => ({ transport }));

  it("refuses bytes that are not an InvokeRequest with Connect's parse error", async () => {
    // A field 1 varint that never ends: no protobuf decoder accepts it.
    const answer = await rawPost(server.url, httpVersion, new Uint8Array([0x08, 0xff, 0xff, 0xff]));
    // connect-es answers a request body it cannot parse with Internal (connect-go says InvalidArgument).
    expect(answer.status).toBe(500);
    expect(JSON.parse(answer.body)).toEqual({ code: "internal", message: "parse binary: premature EOF" });
  });

  it("refuses a request over maxRequestBytes with ResourceExhausted", async () => {
    const big = { address: joe, state: new Uint8Array(65 * 1024), messages: [message("x", "View")] };
    const err = await connectError(
      createClient(FunctionService, transport({ authorization: `Bearer ${token}` })).invoke(invokeRequestToProto(big)),
    );
    expect(err.code).toBe(Code.ResourceExhausted);
  });
});

/** A Connect unary POST of `body` as it is, over a plain HTTP/1.1 or HTTP/2 connection. */
async function rawPost(base: string, httpVersion: "2" | "1.1", body: Uint8Array): Promise<{ status: number; body: string }> {
  const headers = { "content-type": "application/proto", authorization: `Bearer ${token}` };
  const path = "/shoal.v1.FunctionService/Invoke";
  if (httpVersion === "1.1") {
    const res = await fetch(`${base}${path}`, { method: "POST", headers, body });
    return { status: res.status, body: await res.text() };
  }
  const session = http2.connect(base);
  try {
    return await new Promise((resolve, reject) => {
      const stream = session.request({ ":method": "POST", ":path": path, ...headers });
      let status = 0;
      let text = "";
      stream.on("response", (h) => {
        status = Number(h[":status"]);
      });
      stream.setEncoding("utf8");
      stream.on("data", (chunk: string) => {
        text += chunk;
      });
      stream.on("end", () => resolve({ status, body: text }));
      stream.on("error", reject);
      stream.end(body);
    });
  } finally {
    session.close();
  }
}

describe("a function endpoint's fetch handler", () => {
  const endpoint = { fetch: functionsFetchHandler(functions, { bearerToken: token, logger }) };
  // A Connect client whose HTTP requests become real fetch Requests answered by the handler.
  const transport = (headers: Record<string, string> = {}) =>
    createTransport({
      baseUrl: "https://functions.example",
      async httpClient(req) {
        const body = new Uint8Array(await new Response(ReadableStream.from(req.body!)).arrayBuffer());
        const request = new Request(req.url, { method: req.method, headers: req.header, body, signal: req.signal });
        return universalClientResponseFromFetch(await endpoint.fetch(request));
      },
      useBinaryFormat: true,
      interceptors: [withHeaders(headers)],
      acceptCompression: [],
      sendCompression: null,
      compressMinBytes: 1024,
      readMaxBytes: 1 << 24,
      writeMaxBytes: 1 << 24,
    });
  invokeCases(() => ({ transport }));

  it("answers 404 for any other path", async () => {
    expect((await endpoint.fetch(new Request("https://functions.example/shoal.v1.Other/Invoke", { method: "POST" }))).status).toBe(404);
  });
});
