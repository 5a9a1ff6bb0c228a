// The Connect ingress over real sockets (HTTP/1.1 and h2c on one port): typed
// clients, curl-style JSON, and bad input of every kind.
import { connect as http2Connect } from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { createMemoryStorage, createRuntime, listen, type Runtime, type RuntimeServer } from "@shoal/runtime";
import { toConnectError } from "@shoal/runtime/internal";
import { implement, ShoalError } from "@shoal/sdk";
import { EnvelopeSchema } from "@shoal/sdk/internal";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createAccountClient } from "../examples/bank/src/gen/bank/v1/account_shoal.js";
import { GreetRequestSchema } from "../examples/greeter/src/gen/greeter/v1/greeter_pb.js";
import { createGreeterClient, GreeterFunction } from "../examples/greeter/src/gen/greeter/v1/greeter_shoal.js";
import { greeter } from "../examples/greeter/src/greeter.js";

let runtime: Runtime;
let server: RuntimeServer;
let attempts = 0;

beforeAll(async () => {
  runtime = createRuntime({
    functions: [
      implement(GreeterFunction, {
        ...greeter,
        greet(req, ctx) {
          if (req.name === "crash") {
            attempts++;
            throw new Error("the greeter tripped");
          }
          if (req.name === "refuse") throw new ShoalError(Code.PermissionDenied, "not greeting refuse");
          return greeter.greet(req, ctx);
        },
      }),
    ],
    storage: createMemoryStorage(),
    shards: 8,
    maxRequestBytes: 1024,
    retry: { maxAttempts: 3, initialDelayMs: 1, maxDelayMs: 1 },
    logger: "silent",
  });
  await runtime.start();
  server = await listen(runtime, { port: 0 });
});
afterAll(async () => {
  await server.close();
  await runtime.close();
});

const transports: Record<string, () => Transport> = {
  "connect over HTTP/1.1": () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
  "connect over h2c": () => createConnectTransport({ baseUrl: server.url, httpVersion: "2" }),
  "gRPC over h2c": () => createGrpcTransport({ baseUrl: server.url }),
  "gRPC-web over HTTP/1.1": () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }),
};

describe.each(Object.entries(transports))("%s", (name, makeTransport) => {
  it("calls a handler and gets the committed reply", async () => {
    const client = createGreeterClient(makeTransport());
    const who = `ada-${name}`;
    expect(await client.greet({ name: who })).toMatchObject({ greeting: `Hello, ${who}!`, times: 1 });
    expect(await client.greet({ name: who })).toMatchObject({ times: 2 });
    expect(await client.count({ name: who })).toMatchObject({ times: 2 });
  });

  it("sends one-way and answers with the message id", async () => {
    const client = createGreeterClient(makeTransport());
    const receipt = await client.send.greet({ name: `send-${name}` });
    expect(receipt.messageId).not.toBe("");
    await runtime.whenIdle();
    await expect.poll(() => runtime.stateOf(GreeterFunction, `send-${name}`)?.times).toBe(1);
  });

  it("answers InvalidArgument naming the key field when the key is empty", async () => {
    const err = (await createGreeterClient(makeTransport())
      .greet({ name: "" })
      .catch((e) => ConnectError.from(e))) as ConnectError;
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toContain("greeter.v1.GreetRequest.name");
  });

  it("returns a ShoalError's code and message", async () => {
    const err = (await createGreeterClient(makeTransport())
      .greet({ name: "refuse" })
      .catch((e) => ConnectError.from(e))) as ConnectError;
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.rawMessage).toBe("not greeting refuse");
  });

  it("refuses a body over the size limit with ResourceExhausted", async () => {
    const err = (await createGreeterClient(makeTransport())
      .greet({ name: "x".repeat(5000) })
      .catch((e) => ConnectError.from(e))) as ConnectError;
    expect(err.code).toBe(Code.ResourceExhausted);
    // The limit as the user sets it, not connect-es's option name.
    expect(err.rawMessage).toMatch(/is larger than maxRequestBytes \(1024 bytes\); .*ingress\.maxRequestBytes in shoal\.yaml/);
    expect(err.rawMessage).not.toContain("readMaxBytes");
  });
});

it("retries a handler that throws, then answers Internal naming the handler", async () => {
  attempts = 0;
  const err = (await createGreeterClient(transports["connect over HTTP/1.1"]!())
    .greet({ name: "crash" })
    .catch((e) => ConnectError.from(e))) as ConnectError;
  expect(err.code).toBe(Code.Internal);
  expect(err.rawMessage).toBe("greeter.v1.Greeter.Greet failed after 3 attempts: the greeter tripped");
  expect(attempts).toBe(3);
  // The process and the instance still work.
  expect(await createGreeterClient(transports["connect over h2c"]!()).greet({ name: "after-crash" })).toMatchObject({ times: 1 });
});

describe("raw HTTP", () => {
  const post = (
    path: string,
    body: NonNullable<RequestInit["body"]>,
    contentType = "application/json",
    headers: Record<string, string> = {},
  ) => fetch(`${server.url}${path}`, { method: "POST", headers: { "content-type": contentType, ...headers }, body });

  it("serves Connect JSON as curl sends it", async () => {
    const res = await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "curl" }));
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ greeting: "Hello, curl!", times: 1 });
  });

  it("answers an unknown service or method with Unimplemented naming it", async () => {
    const unknownService = await post("/nope.v1.Nothing/Greet", "{}");
    expect([unknownService.status, await unknownService.json()]).toEqual([
      404,
      {
        code: "unimplemented",
        message: "unknown service nope.v1.Nothing in /nope.v1.Nothing/Greet: this node serves greeter.v1.Greeter, shoal.v1.Admin",
      },
    ]);
    const unknownMethod = await post("/greeter.v1.Greeter/Nope", "{}");
    expect([unknownMethod.status, await unknownMethod.json()]).toEqual([
      404,
      { code: "unimplemented", message: "greeter.v1.Greeter has no method Nope (its methods: Count, Greet)" },
    ]);
    const noRoute = await post("/nothing", "{}");
    expect(noRoute.status).toBe(404);
    expect(await noRoute.json()).toEqual({
      code: "unimplemented",
      message:
        "no route for POST /nothing: calls go to /<package.Service>/<Method> (services here: greeter.v1.Greeter, shoal.v1.Admin); other routes: GET /metrics, GET /healthz",
    });
    // gRPC clients read the answer from grpc-status and grpc-message.
    const grpcErr = await createAccountClient(createGrpcTransport({ baseUrl: server.url }))
      .get({ account: "a" })
      .catch((e: unknown) => ConnectError.from(e));
    expect(grpcErr).toMatchObject({ code: Code.Unimplemented, rawMessage: expect.stringContaining("unknown service bank.v1.Account") });
    // A generated client of a function this runtime does not run.
    const err = await createAccountClient(createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }))
      .get({ account: "a" })
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.Unimplemented, rawMessage: expect.stringContaining("unknown service bank.v1.Account") });
  });

  it("answers a wrong HTTP method with 405 naming the method to use", async () => {
    const res = await fetch(`${server.url}/greeter.v1.Greeter/Greet`, {
      method: "PUT",
      body: "{}",
      headers: { "content-type": "application/json" },
    });
    expect([res.status, res.headers.get("allow"), await res.json()]).toEqual([
      405,
      "POST",
      { code: "unimplemented", message: "PUT is not allowed on /greeter.v1.Greeter/Greet; use POST" },
    ]);
    const metrics = await fetch(`${server.url}/metrics`, { method: "POST" });
    expect([metrics.status, await metrics.json()]).toEqual([
      405,
      { code: "unimplemented", message: "POST is not allowed on /metrics; use GET" },
    ]);
  });

  it("answers a content type it does not speak with 415 naming the ones it does", async () => {
    const res = await post("/greeter.v1.Greeter/Greet", "name=joe", "application/x-www-form-urlencoded");
    expect(res.status).toBe(415);
    const { code, message } = (await res.json()) as { code: string; message: string };
    expect(code).toBe("unimplemented");
    expect(message).toBe(
      '/greeter.v1.Greeter/Greet does not accept content type "application/x-www-form-urlencoded"; send one of: ' +
        "application/json, application/proto, application/grpc, application/grpc+proto, application/grpc+json, " +
        "application/grpc-web, application/grpc-web+proto, application/grpc-web+json",
    );
  });

  it("refuses an unknown JSON field with InvalidArgument naming it", async () => {
    const res = await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "typo", nmae: "typo" }));
    expect([res.status, await res.json()]).toEqual([
      400,
      { code: "invalid_argument", message: 'cannot decode message greeter.v1.GreetRequest from JSON: key "nmae" is unknown' },
    ]);
    expect(runtime.stateOf(GreeterFunction, "typo")).toBeUndefined();
  });

  it("answers malformed JSON with InvalidArgument", async () => {
    const res = await post("/greeter.v1.Greeter/Greet", "{not json");
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: "invalid_argument" });
    const wrongType = await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: 42 }));
    expect(await wrongType.json()).toMatchObject({ code: "invalid_argument" });
  });

  it("answers a malformed binary body with InvalidArgument", async () => {
    const res = await post("/greeter.v1.Greeter/Greet", new Uint8Array([0x0a, 0xff, 0x01]), "application/proto");
    expect(res.status).toBe(400);
    const valid = toBinary(GreetRequestSchema, create(GreetRequestSchema, { name: "bin" }));
    const ok = await post("/greeter.v1.Greeter/Greet", valid, "application/proto");
    expect(ok.status).toBe(200);
  });

  it("answers a malformed binary body with InvalidArgument over gRPC-web and gRPC too", async () => {
    const garbage = new Uint8Array([0x0a, 0xff, 0x01]);
    const frame = new Uint8Array(5 + garbage.length);
    new DataView(frame.buffer).setUint32(1, garbage.length);
    frame.set(garbage, 5);
    const web = await post("/greeter.v1.Greeter/Greet", frame, "application/grpc-web+proto");
    const webBody = Buffer.from(await web.arrayBuffer()).toString("latin1");
    expect(webBody).toMatch(/grpc-status: ?3\b/);
    expect(webBody).toContain("parse%20binary");

    const session = http2Connect(server.url);
    try {
      const status = await new Promise<string | undefined>((resolve, reject) => {
        const req = session.request({
          ":method": "POST",
          ":path": "/greeter.v1.Greeter/Greet",
          "content-type": "application/grpc+proto",
          te: "trailers",
        });
        let fromHeaders: string | undefined;
        req.on("response", (headers) => {
          fromHeaders = headers["grpc-status"] as string | undefined;
        });
        req.on("trailers", (trailers) => resolve((trailers["grpc-status"] as string | undefined) ?? fromHeaders));
        req.on("end", () => resolve(fromHeaders));
        req.on("error", reject);
        req.resume();
        req.end(frame);
      });
      expect(status).toBe("3");
    } finally {
      session.close();
    }
  });

  it("answers an oversized JSON body with ResourceExhausted", async () => {
    const res = await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "y".repeat(4000) }));
    expect(await res.json()).toMatchObject({ code: "resource_exhausted" });
  });

  it("rejects a bad Shoal-Delay-Ms header", async () => {
    const res = await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "d" }), "application/json", {
      "shoal-send": "1",
      "shoal-delay-ms": "soon",
    });
    expect(await res.json()).toMatchObject({ code: "invalid_argument", message: expect.stringContaining("shoal-delay-ms") });
  });

  it("rejects a Shoal-Delay-Ms past 10 years naming the header and its range, and the shard keeps serving", async () => {
    const send = (delay: string) =>
      post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "far" }), "application/json", {
        "shoal-send": "1",
        "shoal-delay-ms": delay,
      });
    const res = await send("1e30");
    expect(res.status).toBe(400);
    const error = (await res.json()) as { code: string; message: string };
    expect(error.code).toBe("invalid_argument");
    expect(error.message).toContain("shoal-delay-ms");
    expect(error.message).toContain("from 0 to 315360000000");
    // The same instance's shard still takes requests, sends and delayed sends.
    expect(await (await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "far" }))).json()).toMatchObject({ times: 1 });
    expect((await send("0")).status).toBe(200);
    expect((await send("315360000000")).status).toBe(200);
    await expect.poll(() => runtime.stateOf(GreeterFunction, "far")?.times).toBe(2);
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
  });

  it("fails a message the store cannot encode on its own: InvalidArgument, and its shard keeps serving", async () => {
    // What the header check keeps out, should anything else produce it.
    const envelope = create(EnvelopeSchema, {
      id: "too-late",
      target: { type: GreeterFunction.typeName, key: "late" },
      handler: "Greet",
      payload: toBinary(GreetRequestSchema, create(GreetRequestSchema, { name: "late" })),
      deliverAtMs: 2n ** 63n,
    });
    const err = await Promise.resolve()
      .then(() => runtime.accept(envelope))
      .catch((e) => toConnectError(e, "greeter.v1.Greeter.Greet"));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    expect((err as ConnectError).rawMessage).toContain("greeter.v1.Greeter.Greet: the message cannot be stored");
    expect(await (await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "late" }))).json()).toMatchObject({ times: 1 });
    expect(runtime.status().filter((s) => s.failed !== undefined)).toEqual([]);
  });

  it("serves Prometheus metrics and a health check beside the functions", async () => {
    await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "metered" }));
    await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "refuse" }));
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/^shoal_invocations_total\{function="greeter\.v1\.Greeter",handler="Greet",outcome="ok"\} \d+$/m);
    expect(metrics).toMatch(/^shoal_invocations_total\{function="greeter\.v1\.Greeter",handler="Greet",outcome="PermissionDenied"\} \d+$/m);
    expect(metrics).toMatch(
      /^shoal_invocation_duration_seconds_bucket\{le="0\.005",function="greeter\.v1\.Greeter",handler="Greet"\} \d+$/m,
    );
    expect(metrics).toMatch(/^shoal_instances\{shard="\d+"\} \d+$/m);
    expect(metrics).toMatch(/^shoal_storage_groups \d+$/m);
    // Counted per invocation, for each outcome apart.
    const counts = (text: string) => ({
      ok: Number(/^shoal_invocations_total\{function="greeter\.v1\.Greeter",handler="Greet",outcome="ok"\} (\d+)$/m.exec(text)?.[1]),
      refused: Number(
        /^shoal_invocations_total\{function="greeter\.v1\.Greeter",handler="Greet",outcome="PermissionDenied"\} (\d+)$/m.exec(text)?.[1],
      ),
      timed: Number(/^shoal_invocation_duration_seconds_count\{function="greeter\.v1\.Greeter",handler="Greet"\} (\d+)$/m.exec(text)?.[1]),
    });
    const before = counts(metrics);
    await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "metered" }));
    await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "metered" }));
    await post("/greeter.v1.Greeter/Greet", JSON.stringify({ name: "refuse" }));
    expect(counts(await (await fetch(`${server.url}/metrics`)).text())).toEqual({
      ok: before.ok + 2,
      refused: before.refused + 1,
      timed: before.timed + 3,
    });
    // The process: memory, heap, event-loop lag and GC pauses.
    expect(metrics).toMatch(/^process_resident_memory_bytes \d+$/m);
    expect(metrics).toMatch(/^nodejs_heap_size_used_bytes \d+$/m);
    expect(metrics).toMatch(/^nodejs_eventloop_lag_seconds [\d.e-]+$/m);
    expect(metrics).toMatch(/^# TYPE nodejs_gc_duration_seconds histogram$/m);
    const health = await fetch(`${server.url}/healthz`);
    expect([health.status, await health.text()]).toEqual([200, "ok\n"]);
    expect((await fetch(`${server.url}/nothing`)).status).toBe(404);
  });

  it("speaks h2c with prior knowledge on the same port", async () => {
    const session = http2Connect(server.url);
    try {
      const body = await new Promise<string>((resolve, reject) => {
        const req = session.request({ ":method": "POST", ":path": "/greeter.v1.Greeter/Greet", "content-type": "application/json" });
        let data = "";
        req.setEncoding("utf8");
        req.on("data", (chunk) => (data += chunk));
        req.on("end", () => resolve(data));
        req.on("error", reject);
        req.end(JSON.stringify({ name: "h2" }));
      });
      expect(JSON.parse(body)).toEqual({ greeting: "Hello, h2!", times: 1 });
    } finally {
      session.close();
    }
  });
});

describe("with ignoreUnknownJsonFields", () => {
  let lenient: Runtime;
  let lenientServer: RuntimeServer;
  beforeAll(async () => {
    lenient = createRuntime({
      functions: [implement(GreeterFunction, greeter)],
      storage: createMemoryStorage(),
      shards: 2,
      ignoreUnknownJsonFields: true,
      logger: "silent",
    });
    await lenient.start();
    lenientServer = await listen(lenient, { port: 0 });
  });
  afterAll(async () => {
    await lenientServer.close();
    await lenient.close();
  });
  const post = (body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${lenientServer.url}/greeter.v1.Greeter/Greet`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
    });

  it("drops unknown fields of a JSON request", async () => {
    const res = await post({ name: "newer-client", salutation: "Hi" });
    expect([res.status, await res.json()]).toEqual([200, { greeting: "Hello, newer-client!", times: 1 }]);
  });

  it("still refuses them, naming the field, when the request asks with Shoal-Reject-Unknown-Fields", async () => {
    const res = await post({ name: "typed", nmae: "typed" }, { "shoal-reject-unknown-fields": "1" });
    expect([res.status, await res.json()]).toEqual([
      400,
      { code: "invalid_argument", message: 'cannot decode message greeter.v1.GreetRequest from JSON: key "nmae" is unknown' },
    ]);
    expect(lenient.stateOf(GreeterFunction, "typed")).toBeUndefined();
    const ok = await post({ name: "typed" }, { "shoal-reject-unknown-fields": "1" });
    expect([ok.status, await ok.json()]).toEqual([200, { greeting: "Hello, typed!", times: 1 }]);
  });
});
