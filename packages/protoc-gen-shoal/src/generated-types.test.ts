// Type-checks the generated code with implementations a user would write: a
// correct one compiles, a wrong one fails with the diagnostic the user sees.
// The generated files are written to a folder inside this package, so that
// `@shoal/sdk` (packages/sdk/dist: build it first) and `@bufbuild/protobuf`
// resolve through node_modules like in a user's project.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { protocGenEs } from "@bufbuild/protoc-gen-es/dist/cjs/src/protoc-gen-es-plugin.js";
import { type Diagnostic, Project, ts } from "ts-morph";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildRequest, packageDir, repoRoot, runPlugin } from "./fixtures.test-util.js";
import { protocGenShoal } from "./protoc-gen-shoal-plugin.js";

const tmpRoot = join(packageDir, ".typecheck-tmp");

const imports = `
import { implement, module, type Transport } from "@shoal/sdk";
import { CounterFunction, type CounterHandlers } from "./gen/counter/v1/counter_shoal.js";
import { ClockFunction, EchoFunction, type EchoHandlers } from "./gen/echo/v1/echo_shoal.js";
import type { CountRequest, GreetResponse } from "./gen/greeter/v1/greeter_pb.js";
import {
  createGreeterClient,
  GreeterFunction,
  type GreeterContext,
  type GreeterHandlers,
  type GreeterSharedContext,
} from "./gen/greeter/v1/greeter_shoal.js";
`;

/** Implementations to compile, by file name. */
const sources: Record<string, string> = {
  "correct.ts": `${imports}
const greeter: GreeterHandlers = {
  async greet(request, ctx) {
    ctx.state.times += 1;
    ctx.state.languages.push(request.language);
    const echoed = await ctx.call(EchoFunction).say({ text: request.name });
    const token: string = ctx.send(CounterFunction, { delay: 1000 }).add({ counterId: 1n, delta: 1n });
    ctx.log.info("greeted", { token, caller: ctx.caller?.key });
    return { greeting: \`hello \${echoed.text}\`, times: ctx.state.times };
  },
  count(request, ctx) {
    const times: number = ctx.state.times;
    const languages: readonly string[] = ctx.state.languages;
    return { times: request.name === ctx.key ? times + languages.length : 0 };
  },
  forget(_request, ctx) {
    ctx.clearState();
    return {};
  },
};

const counter: CounterHandlers = {
  add(request, ctx) {
    const id: bigint = request.counterId;
    ctx.state.value += request.delta + id * 0n;
    return { value: ctx.state.value };
  },
  get(request, ctx) {
    const id: number = request.counterId;
    return { value: ctx.state.value + BigInt(id * 0) };
  },
  async reset(request) {
    const id: bigint | undefined = request.counterId;
    return { value: id ?? 0n };
  },
};

const echo: EchoHandlers = {
  say: (request, ctx) => ({ text: \`\${ctx.self.type}: \${request.text}\` }),
};

/** Helpers may take the named contexts. */
export function greetings(ctx: GreeterContext | GreeterSharedContext): number {
  return ctx.state.times;
}

export default module(
  implement(GreeterFunction, greeter),
  implement(CounterFunction, counter),
  implement(EchoFunction, echo),
  implement(ClockFunction, { now: () => ({ seconds: 1n }) }),
);

export async function callFromOutside(transport: Transport): Promise<string> {
  const client = createGreeterClient(transport);
  const reply: GreetResponse = await client.greet({ name: "joe" }, { idempotencyKey: "k", timeoutMs: 100 });
  const receipt = await client.send.count({ name: "joe" }, { delay: 10 });
  const count = await client.count({ name: "joe" });
  return \`\${reply.greeting} \${count.times} \${receipt.messageId}\`;
}
`,
  "missing-handler.ts": `${imports}
export const greeter: GreeterHandlers = { // error here
  greet: (request) => ({ greeting: request.name }),
  forget: () => ({}),
};
`,
  "wrong-return-type.ts": `${imports}
export const greeter: GreeterHandlers = {
  greet: () => ({ greeting: 42 }), // error here
  count: () => ({ times: 1 }),
  forget: () => ({}),
};
`,
  "wrong-async-return-type.ts": `${imports}
export const greeter: GreeterHandlers = {
  async greet() { // error here
    return { greeting: "hi", times: "many" };
  },
  count: () => ({ times: 1 }),
  forget: () => ({}),
};
`,
  "shared-state-write.ts": `${imports}
export const greeter: GreeterHandlers = {
  greet: () => ({}),
  count(_request, ctx) {
    ctx.state.times = 1; // error here
    return { times: ctx.state.times };
  },
  forget: () => ({}),
};
`,
  "shared-state-push.ts": `${imports}
export const greeter: GreeterHandlers = {
  greet: () => ({}),
  count(_request, ctx) {
    ctx.state.languages.push("fr"); // error here
    return {};
  },
  forget: () => ({}),
};
`,
  "shared-clear-state.ts": `${imports}
export const greeter: GreeterHandlers = {
  greet: () => ({}),
  count(_request, ctx) {
    ctx.clearState(); // error here
    return {};
  },
  forget: () => ({}),
};
`,
  "shared-with-exclusive-context.ts": `${imports}
export const greeter: GreeterHandlers = {
  greet: () => ({}),
  count(_request: CountRequest, ctx: GreeterContext) { // error here
    ctx.state.times = 1;
    return {};
  },
  forget: () => ({}),
};
`,
  "wrong-request-type.ts": `${imports}
export const greeter: GreeterHandlers = {
  greet: (request: CountRequest) => ({ greeting: request.name }), // error here
  count: () => ({ times: 1 }),
  forget: () => ({}),
};
`,
  "unknown-request-field.ts": `${imports}
export const greeter: GreeterHandlers = {
  greet: (request) => ({ greeting: request.nmae }), // error here
  count: () => ({ times: 1 }),
  forget: () => ({}),
};
`,
  "stateless-state.ts": `${imports}
export const echo: EchoHandlers = {
  say: (_request, ctx) => ({ text: String(ctx.state) }), // error here
};
`,
  "wrong-function.ts": `${imports}
declare const echo: EchoHandlers;
export const impl = implement(GreeterFunction, echo); // error here
`,
  "client-wrong-request.ts": `${imports}
export async function f(transport: Transport) {
  await createGreeterClient(transport).greet({ name: 1 }); // error here
}
`,
  "client-unknown-field.ts": `${imports}
export async function f(transport: Transport) {
  await createGreeterClient(transport).greet({ nom: "joe" }); // error here
}
`,
  "client-wrong-reply.ts": `${imports}
export async function f(transport: Transport) {
  const reply = await createGreeterClient(transport).count({ name: "joe" });
  const greeting: string = reply.greeting; // error here
  return greeting;
}
`,
  "client-send-options.ts": `${imports}
export async function f(transport: Transport) {
  await createGreeterClient(transport).send.greet({ name: "joe" }, { delay: "soon" }); // error here
}
`,
};

let dir = "";
let project: Project;

beforeAll(() => {
  mkdirSync(tmpRoot, { recursive: true });
  dir = mkdtempSync(join(tmpRoot, "run-"));
  const files = new Map<string, string>([
    ...generate("testdata/valid", "gen"),
    ...Object.entries(sources),
    // the README's snippets, against the code generated for examples/greeter
    ...generate("../../examples/greeter/proto", "readme/gen"),
    ...readmeSnippets().map((snippet, i): [string, string] => [`readme/snippet-${i + 1}.ts`, snippet]),
  ]);
  for (const [name, content] of files) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), content);
  }
  // The repository's strict options, without project-build settings.
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      extends: relative(dir, join(repoRoot, "tsconfig.base.json")),
      compilerOptions: { composite: false, declaration: false, declarationMap: false, sourceMap: false, noEmit: true },
      include: ["**/*.ts"],
    }),
  );
  project = new Project({ tsConfigFilePath: join(dir, "tsconfig.json") });
});

afterAll(() => {
  if (dir !== "") rmSync(dir, { recursive: true, force: true });
  if (existsSync(tmpRoot) && readdirSync(tmpRoot).length === 0) rmSync(tmpRoot, { recursive: true, force: true });
});

/** The _pb.ts and _shoal.ts files of a proto tree, as buf.gen.yaml generates them, under `out`. */
function generate(protoDir: string, out: string): [string, string][] {
  const request = buildRequest(protoDir, "target=ts,import_extension=js");
  const pb = runPlugin(protocGenEs, {
    ...request,
    parameter: "target=ts,import_extension=js,rewrite_imports=./shoal/**/*_pb.js:@shoal/sdk/gen",
  });
  const shoal = runPlugin(protocGenShoal, request);
  return [...pb, ...shoal].map(([name, content]) => [`${out}/${name}`, content]);
}

/** The ```ts blocks of README.md. */
function readmeSnippets(): string[] {
  const readme = readFileSync(join(packageDir, "README.md"), "utf8");
  return [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((match) => match[1] ?? "");
}

function diagnosticsOf(name: string): string[] {
  const file = project.getSourceFileOrThrow(join(dir, name));
  return file.getPreEmitDiagnostics().map(format);
}

function format(diagnostic: Diagnostic): string {
  const text = ts.flattenDiagnosticMessageText(diagnostic.compilerObject.messageText, "\n");
  return `${diagnostic.getSourceFile()?.getBaseName() ?? ""}:${diagnostic.getLineNumber() ?? 0}: ${text}`;
}

describe("generated code", () => {
  it("compiles under the repository's strict options", () => {
    const generated = project
      .getSourceFiles()
      .map((file) => ({ file, name: relative(dir, file.getFilePath()).replaceAll("\\", "/") }))
      .filter(({ name }) => name.startsWith("gen/") || name.startsWith("readme/gen/"));
    expect(generated.map(({ name }) => name).sort()).toEqual([
      "gen/counter/v1/counter_pb.ts",
      "gen/counter/v1/counter_shoal.ts",
      "gen/echo/v1/echo_pb.ts",
      "gen/echo/v1/echo_shoal.ts",
      "gen/greeter/v1/greeter_pb.ts",
      "gen/greeter/v1/greeter_shoal.ts",
      "gen/greeter/v1/state_pb.ts",
      "gen/plain/v1/plain_pb.ts",
      "readme/gen/greeter/v1/greeter_pb.ts",
      "readme/gen/greeter/v1/greeter_shoal.ts",
    ]);
    expect(generated.flatMap(({ file }) => file.getPreEmitDiagnostics().map(format))).toEqual([]);
  });

  it("accepts a correct implementation and client use", () => {
    expect(diagnosticsOf("correct.ts")).toEqual([]);
  });

  it("compiles the README's snippets", () => {
    const snippets = readmeSnippets();
    expect(snippets.length).toBeGreaterThan(0);
    expect(snippets.flatMap((_, i) => diagnosticsOf(`readme/snippet-${i + 1}.ts`))).toEqual([]);
  });
});

describe("a wrong implementation fails with the diagnostic a user sees", () => {
  const cases: [file: string, message: RegExp][] = [
    ["missing-handler.ts", /Property 'count' is missing in type .* but required in type 'GreeterHandlers'/],
    ["wrong-return-type.ts", /Type 'number' is not assignable to type 'string'/],
    ["wrong-async-return-type.ts", /Type 'string' is not assignable to type 'number'/],
    ["shared-state-write.ts", /Cannot assign to 'times' because it is a read-only property/],
    ["shared-state-push.ts", /Property 'push' does not exist on type 'readonly string\[\]'/],
    ["shared-clear-state.ts", /Property 'clearState' does not exist on type 'GreeterSharedContext'/],
    ["shared-with-exclusive-context.ts", /Types of parameters 'ctx' and 'ctx' are incompatible/],
    ["wrong-request-type.ts", /Types of parameters 'request' and 'request' are incompatible/],
    ["unknown-request-field.ts", /Property 'nmae' does not exist on type 'GreetRequest'/],
    ["stateless-state.ts", /Property 'state' does not exist on type 'BaseContext'/],
    ["wrong-function.ts", /Argument of type 'EchoHandlers' is not assignable to parameter of type 'GreeterHandlers'/],
    ["client-wrong-request.ts", /Type 'number' is not assignable to type 'string'/],
    ["client-unknown-field.ts", /Object literal may only specify known properties, and 'nom' does not exist/],
    ["client-wrong-reply.ts", /Property 'greeting' does not exist on type 'CountResponse'/],
    ["client-send-options.ts", /Type 'string' is not assignable to type 'number'/],
  ];
  for (const [file, message] of cases) {
    it(file.replace(/\.ts$/, ""), () => {
      // the line marked "// error here"
      const line = (sources[file] ?? "").split("\n").findIndex((text) => text.endsWith("// error here")) + 1;
      expect(line).toBeGreaterThan(0);
      const diagnostics = diagnosticsOf(file);
      expect(diagnostics).toHaveLength(1);
      expect(diagnostics[0]).toMatch(new RegExp(`^${file.replace(".", "\\.")}:${line}: (.|\\n)*${message.source}`));
    });
  }
});
