import { once } from "node:events";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Admin, StatusRequestSchema } from "@shoal/sdk/internal";
import { afterEach, describe, expect, it } from "vitest";
import { createConnectAdapter } from "./connect-adapter.js";

const servers: Server[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

/** Serves Admin/Status with `status` over a real HTTP/1.1 server; its base URL. */
async function serve(status: (signal: AbortSignal) => Promise<void>): Promise<string> {
  const handler = createConnectAdapter({
    routes(router) {
      router.service(Admin, {
        async status(_request, context) {
          await status(context.signal);
          return {};
        },
      });
    },
    fallback(_req, res) {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("no such route\n");
    },
  });
  const server = createServer(handler);
  servers.push(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe("the ingress's Connect adapter", () => {
  it("serves the routes, and hands other paths to the fallback", async () => {
    const url = await serve(async () => {});
    const client = createClient(Admin, createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));
    await expect(client.status({})).resolves.toBeDefined();
    const other = await fetch(`${url}/nowhere`);
    expect(other.status).toBe(404);
    expect(await other.text()).toBe("no such route\n");
  });

  it("aborts a handler's signal when its client goes away before the answer", async () => {
    let aborted!: (reason: unknown) => void;
    const abortReason = new Promise<unknown>((resolve) => {
      aborted = resolve;
    });
    let started!: () => void;
    const handlerStarted = new Promise<void>((resolve) => {
      started = resolve;
    });
    const url = await serve(async (signal) => {
      started();
      await new Promise<void>((resolve) => {
        signal.addEventListener("abort", () => {
          aborted(signal.reason);
          resolve();
        });
      });
    });
    const body = toBinary(StatusRequestSchema, create(StatusRequestSchema, {}));
    const req = request(`${url}/shoal.v1.Admin/Status`, { method: "POST", headers: { "content-type": "application/proto" } });
    req.on("error", () => {});
    req.end(body);
    await handlerStarted;
    req.destroy();
    const reason = await abortReason;
    expect(reason).toBeInstanceOf(Error);
    // Not the handler's deadline: the request's signal, aborted by the closed connection.
    expect(ConnectError.from(reason).code).not.toBe(Code.DeadlineExceeded);
  });
});
