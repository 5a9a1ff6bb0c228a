import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";

// Deno, Bun and Workers run web-standard code; a function module that pulls in
// `node:` built-ins through the SDK would not load there. This runs the built
// SDK in a Node process whose module resolution refuses every built-in.

const root = new URL("../../..", import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), "shoal-web-standard-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

writeFileSync(
  join(dir, "deny-builtins.mjs"),
  `import { isBuiltin } from "node:module";
export async function resolve(specifier, context, next) {
  if (isBuiltin(specifier)) throw new Error("built-in module refused: " + specifier);
  return next(specifier, context);
}
`,
);
writeFileSync(
  join(dir, "register.mjs"),
  `import { register } from "node:module";
register(${JSON.stringify(new URL(`file://${join(dir, "deny-builtins.mjs")}`).href)});
`,
);

/** Runs ESM `code` from the repository root with built-ins refused; resolves with stdout. */
async function runWithoutBuiltins(code: string): Promise<string> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ["--import", join(dir, "register.mjs"), "--input-type=module", "-e", code],
    { cwd: root },
  );
  return stdout.trim();
}

describe("@shoal/sdk without node: built-ins", () => {
  it("refuses a built-in, so the check below can fail", async () => {
    await expect(runWithoutBuiltins(`await import("node:crypto");`)).rejects.toThrow(/built-in module refused: node:crypto/);
  });

  it("loads every entry point and runs a handler invocation", async () => {
    const out = await runWithoutBuiltins(`
      const sdk = await import("@shoal/sdk");
      const internal = await import("@shoal/sdk/internal");
      const { create, toBinary } = await import("@bufbuild/protobuf");
      const { default: greeterModule } = await import("./examples/greeter/dist/module.js");
      const [{ fn, handlers }] = greeterModule.implementations;
      const info = fn.handlers.get("Greet");
      const payload = toBinary(info.method.input, create(info.method.input, { name: "web" }));
      const outcome = await internal.runInvocation({
        fn, handlers, handler: info, invocationId: "i1", self: { type: fn.typeName, key: "web" }, caller: undefined,
        payload, state: undefined, journal: [], log: console, issueCall: () => "suspend",
      });
      console.log(typeof sdk.ShoalError, outcome.status, outcome.reply.result.case, internal.requestHash(payload).length);
    `);
    expect(out).toBe("function done ok 32");
  });

  it("answers shoal.v1.FunctionService through the fetch handler of @shoal/sdk/fetch", async () => {
    const out = await runWithoutBuiltins(`
      const { functionsFetchHandler } = await import("@shoal/sdk/fetch");
      const internal = await import("@shoal/sdk/internal");
      const { create, fromBinary, toBinary } = await import("@bufbuild/protobuf");
      const { default: greeterModule } = await import("./examples/greeter/dist/module.js");
      const [{ fn }] = greeterModule.implementations;
      const input = fn.handlers.get("Greet").method.input;
      const address = { type: fn.typeName, key: "web" };
      const envelope = create(internal.EnvelopeSchema, { id: "m1", target: address, handler: "Greet", payload: toBinary(input, create(input, { name: "web" })) });
      const body = toBinary(internal.functionProto.InvokeRequestSchema, internal.invokeRequestToProto({ address, state: undefined, messages: [{ envelope, journal: [] }] }));
      const fetch = functionsFetchHandler(greeterModule, { logger: console });
      const res = await fetch(new Request("https://fn.example/shoal.v1.FunctionService/Invoke", { method: "POST", headers: { "content-type": "application/proto" }, body }));
      const answer = internal.invokeResponseFromProto(fromBinary(internal.functionProto.InvokeResponseSchema, new Uint8Array(await res.arrayBuffer())));
      console.log(res.status, answer.outcomes.map((o) => o.status + ":" + o.reply.result.case).join());
    `);
    expect(out).toBe("200 done:ok");
  });
});
