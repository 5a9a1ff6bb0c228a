// A function endpoint process for the bank: @shoal/sdk/serve's serveFunctions
// behind an h2c server that misbehaves as the environment says, for the fault
// tests of the remote invoker (test/remote-functions.test.ts).
//
//   SHOAL_FAULT        none | hang | garbage | wrong-instance | version | crash-batch
//                      | invoke-only | many-count | many-order
//   SHOAL_FAULT_TIMES  how many Invoke or InvokeMany requests misbehave before it answers well (default: all)
//   PORT               the port (default: a free one)
//
// hang: never answers. garbage: answers 200 with bytes that are no protobuf.
// wrong-instance: answers the real outcomes for another key. version: answers
// the real outcomes as protocol version 99. crash-batch: on a request with two
// or more messages, runs them, then SIGKILLs itself before it answers (and
// answers single messages slowly, so that batches come). These apply to Invoke
// and InvokeMany alike (to each response of an InvokeMany). invoke-only: an
// endpoint of an older SDK, which answers InvokeMany with 404. many-count:
// answers an InvokeMany with its last result left out. many-order: answers an
// InvokeMany with its results in reverse order.
// Every fault prints `fault <mode>` on stdout; once listening it prints
// `endpoint listening at <url>`.
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { functionProto } from "@shoal/sdk/internal";
import { serveFunctions } from "@shoal/sdk/serve";
import bank from "../../examples/bank/dist/module.js";

const mode = process.env.SHOAL_FAULT ?? "none";
let faultsLeft = process.env.SHOAL_FAULT_TIMES === undefined ? Number.POSITIVE_INFINITY : Number(process.env.SHOAL_FAULT_TIMES);
const endpoint = serveFunctions(bank);

function fault(): boolean {
  if (faultsLeft <= 0) return false;
  faultsLeft--;
  process.stdout.write(`fault ${mode}\n`);
  return true;
}

const server = http2.createServer(async (req, res) => {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const body = Buffer.concat(chunks);
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    // Uncompressed answers, so that a fault can rewrite them.
    if (name.startsWith(":") || name.endsWith("accept-encoding") || value === undefined) continue;
    headers.set(name, Array.isArray(value) ? value.join(", ") : value);
  }
  const isMany = req.url.endsWith("/shoal.v1.FunctionService/InvokeMany");
  const isInvoke = isMany || req.url.endsWith("/shoal.v1.FunctionService/Invoke");
  const requests = isMany
    ? fromBinary(functionProto.InvokeManyRequestSchema, body).requests
    : isInvoke
      ? [fromBinary(functionProto.InvokeRequestSchema, body)]
      : [];
  const messages = requests.reduce((n, r) => n + r.messages.length, 0);
  if (isMany && mode === "invoke-only" && fault()) {
    res.writeHead(404).end();
    return;
  }
  if (isInvoke && mode === "hang" && fault()) return;
  // Slow single messages let the next ones queue on their instance, so that a batch comes.
  if (isInvoke && mode === "crash-batch" && messages < 2) await new Promise((resolve) => setTimeout(resolve, 200));
  if (isInvoke && mode === "garbage" && fault()) {
    res.writeHead(200, { "content-type": "application/proto" }).end(Buffer.from([0xff, 0xff, 0xff, 0xff]));
    return;
  }
  const answer = await endpoint.fetch(new Request(`http://endpoint${req.url}`, { method: req.method, headers, body }));
  let out = Buffer.from(await answer.arrayBuffer());
  if (isInvoke && answer.status === 200) {
    if (mode === "crash-batch" && messages >= 2 && fault()) process.kill(process.pid, "SIGKILL");
    const rewriteMany = (change: (r: functionProto.InvokeManyResponse) => void) => {
      const response = fromBinary(functionProto.InvokeManyResponseSchema, out);
      change(response);
      out = Buffer.from(toBinary(functionProto.InvokeManyResponseSchema, response));
    };
    const rewrite = (change: (r: functionProto.InvokeResponse) => void) => {
      if (isMany) {
        rewriteMany((many) => {
          for (const { result } of many.results) if (result.case === "response") change(result.value);
        });
        return;
      }
      const response = fromBinary(functionProto.InvokeResponseSchema, out);
      change(response);
      out = Buffer.from(toBinary(functionProto.InvokeResponseSchema, response));
    };
    if (isMany && mode === "many-count" && fault()) {
      rewriteMany((r) => {
        r.results.pop();
      });
    }
    if (isMany && mode === "many-order" && fault()) {
      rewriteMany((r) => {
        r.results.reverse();
      });
    }
    if (mode === "wrong-instance" && fault()) {
      rewrite((r) => {
        if (r.address !== undefined) r.address.key = `${r.address.key}-other`;
      });
    }
    if (mode === "version" && fault()) {
      rewrite((r) => {
        r.protocolVersion = 99;
      });
    }
  }
  const responseHeaders: Record<string, string> = {};
  answer.headers.forEach((value, name) => {
    if (name !== "content-length") responseHeaders[name] = value;
  });
  res.writeHead(answer.status, responseHeaders).end(out);
});

server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  process.stdout.write(`endpoint listening at http://127.0.0.1:${(server.address() as AddressInfo).port}\n`);
});
