// `shoal init <dir>`: a standalone project, outside Shoal's workspace, that
// generates, type-checks, tests and runs with its own npm scripts.
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";

/**
 * The versions a new project pins, the same this repository builds and tests
 * with (init.test.ts checks them against the repository's package.json files).
 */
export const pinnedVersions = {
  "@bufbuild/protobuf": "2.17.0",
  "@connectrpc/connect": "2.2.0",
  "@connectrpc/connect-node": "2.2.0",
  "@bufbuild/buf": "1.75.0",
  "@bufbuild/protoc-gen-es": "2.17.0",
  "@types/node": "22.20.5",
  typescript: "5.9.3",
  vitest: "4.1.12",
} as const;

/** Shoal's own packages a project depends on; they share the CLI's version. */
export const shoalPackages = ["@shoal/sdk", "@shoal/runtime", "@shoal/testing", "@shoal/cli", "@shoal/protoc-gen-shoal"] as const;

/** What `init` needs beyond the folder. */
export interface InitOptions {
  /**
   * A folder holding `npm pack` tarballs of the Shoal packages (shoal-sdk-0.1.0.tgz, ...).
   * The project then depends on those files instead of the registry's versions.
   */
  readonly from?: string;
}

/** A mistake `init` can name: the folder is not empty, a tarball is missing. */
export class InitError extends Error {
  override name = "InitError";
}

function cliVersion(): string {
  // dist/init.js and src/init.ts both sit one folder below package.json.
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
  return pkg.version;
}

/** The spec each Shoal package gets in package.json: the CLI's version, or a packed tarball. */
function shoalSpecs(from: string | undefined): Record<string, string> {
  const version = cliVersion();
  const specs: Record<string, string> = {};
  for (const name of shoalPackages) {
    if (from === undefined) {
      specs[name] = version;
      continue;
    }
    // npm pack names @scope/name-x.y.z as scope-name-x.y.z.tgz.
    const file = `${name.slice(1).replace("/", "-")}-${version}.tgz`;
    const path = resolve(from, file);
    if (!existsSync(path)) {
      throw new InitError(`--from ${from} has no ${file}; run npm pack for ${name} ${version} into that folder, or leave out --from`);
    }
    specs[name] = `file:${path}`;
  }
  return specs;
}

function packageJson(name: string, from: string | undefined): string {
  const shoal = shoalSpecs(from);
  const pick = (names: readonly string[], table: Record<string, string>) => Object.fromEntries(names.map((n) => [n, table[n]]));
  const pkg = {
    name,
    version: "0.1.0",
    private: true,
    type: "module",
    engines: { node: ">=20" },
    scripts: {
      generate: "buf generate",
      typecheck: "tsc --noEmit",
      test: "vitest run",
      dev: "shoal dev src/module.ts",
      build: "tsc",
      // Built JavaScript, as an endpoint runs in production; node itself (not
      // a wrapper) gets the signals, so SIGTERM closes it gracefully.
      "serve-functions": "tsc && node dist/serve-functions.js",
    },
    dependencies: {
      ...pick(["@shoal/sdk", "@shoal/runtime"], shoal),
      ...pick(["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-node"], pinnedVersions),
    },
    devDependencies: {
      ...pick(["@shoal/cli", "@shoal/testing", "@shoal/protoc-gen-shoal"], shoal),
      ...pick(["@bufbuild/buf", "@bufbuild/protoc-gen-es", "@types/node", "typescript", "vitest"], pinnedVersions),
    },
    // npm runs no install scripts unless allowed: buf fetches its binary, fs-ext
    // (the local store's file lock) compiles, tsx's esbuild fetches its binary.
    allowScripts: { "@bufbuild/buf": true, "fs-ext": true, esbuild: true },
    // The Shoal packages depend on each other by version; with tarballs those
    // versions must resolve to the same files, not to the registry.
    ...(from === undefined ? {} : { overrides: Object.fromEntries(shoalPackages.map((n) => [n, `$${n}`])) }),
  };
  return `${JSON.stringify(pkg, null, 2)}\n`;
}

// The second module is the options.proto that @shoal/sdk ships, so
// `import "shoal/v1/options.proto"` resolves offline, at the installed version.
const bufYaml = `version: v2
modules:
  - path: proto
  - path: node_modules/@shoal/sdk/proto
`;

const bufGenYaml = `# npm run generate: proto/ -> src/gen (messages by protoc-gen-es, handler
# interfaces and clients by protoc-gen-shoal). Shoal's own options resolve to
# the code inside @shoal/sdk.
version: v2
clean: true
inputs:
  - directory: proto
plugins:
  - local: protoc-gen-es
    out: src/gen
    opt:
      - target=ts
      - import_extension=js
      - rewrite_imports=./shoal/**/*_pb.js:@shoal/sdk/gen
  - local: protoc-gen-shoal
    out: src/gen
    opt:
      - target=ts
      - import_extension=js
`;

const tsconfig = `${JSON.stringify(
  {
    compilerOptions: {
      target: "ES2022",
      lib: ["ES2023"],
      module: "NodeNext",
      moduleResolution: "NodeNext",
      strict: true,
      noUncheckedIndexedAccess: true,
      verbatimModuleSyntax: true,
      skipLibCheck: true,
      types: ["node"],
      rootDir: "src",
      outDir: "dist",
    },
    include: ["src"],
  },
  null,
  2,
)}\n`;

const counterProto = `syntax = "proto3";
package hello.v1;
import "shoal/v1/options.proto";

// Counts, per name.
service Counter {
  option (shoal.v1.function) = { state: "hello.v1.CounterState" };
  // Adds \`delta\` and returns the new value.
  rpc Add(AddRequest) returns (Value);
  // Reads the value; shared handlers run concurrently and cannot write state.
  rpc Get(GetRequest) returns (Value) { option (shoal.v1.handler) = { shared: true }; }
}
message AddRequest { string name = 1 [(shoal.v1.key) = true]; int32 delta = 2; }
message GetRequest { string name = 1 [(shoal.v1.key) = true]; }
message Value { int32 value = 1; }
message CounterState { int32 value = 1; }
`;

const counterTs = `import type { CounterHandlers } from "./gen/hello/v1/counter_shoal.js";

export const counter: CounterHandlers = {
  add(req, ctx) {
    ctx.state.value += req.delta;
    return { value: ctx.state.value };
  },
  get(_req, ctx) {
    return { value: ctx.state.value }; // ctx.state is read-only here: writing it is a type error
  },
};
`;

const moduleTs = `import { implement, module } from "@shoal/sdk";
import { counter } from "./counter.js";
import { CounterFunction } from "./gen/hello/v1/counter_shoal.js";

export default module(implement(CounterFunction, counter));
`;

const serveFunctionsTs = `// npm run serve-functions: these functions as a remote function endpoint
// (shoal.v1.FunctionService over HTTP/2) for a runtime whose shoal.yaml lists
// it under functions.remote. --port or PORT (default 9080), --host or HOST;
// SHOAL_TLS_CERT, SHOAL_TLS_KEY, SHOAL_TLS_CA and SHOAL_BEARER_TOKEN secure it.
import { runFunctionEndpoint } from "@shoal/sdk/serve";
import functions from "./module.js";

await runFunctionEndpoint(functions);
`;

const counterTestTs = `import { createTestEnv } from "@shoal/testing";
import { expect, it } from "vitest";
import { CounterFunction } from "./gen/hello/v1/counter_shoal.js";
import app from "./module.js";

it("counts per name", async () => {
  const env = await createTestEnv({ functions: app });
  const counter = env.client(CounterFunction);
  await counter.add({ name: "ada", delta: 2 });
  expect(await counter.add({ name: "ada", delta: 3 })).toMatchObject({ value: 5 });
  await counter.add({ name: "bob", delta: 1 });
  expect(await counter.get({ name: "ada" })).toMatchObject({ value: 5 });
  expect(env.stateOf(CounterFunction, "bob")?.value).toBe(1);
  await env.close();
});
`;

const gitignore = `node_modules/
dist/
src/gen/
.shoal/
`;

const readme = (name: string) => `# ${name}

A Shoal function: \`proto/hello/v1/counter.proto\` describes it, \`src/counter.ts\`
implements it.

\`\`\`sh
npm install
npm run generate    # proto/ -> src/gen
npm run typecheck
npm test
npm run dev         # serves at http://127.0.0.1:8080, state in .shoal/
curl -s http://127.0.0.1:8080/hello.v1.Counter/Add -H 'content-type: application/json' -d '{"name":"ada","delta":2}'
\`\`\`

To run the functions apart from the runtime (remote functions),
\`npm run serve-functions\` serves them at http://127.0.0.1:9080, and a runtime
with no code of yours calls them:

\`\`\`sh
npx buf build -o functions.binpb    # the function types, for the runtime
cat > shoal.yaml <<'YAML'
functions:
  descriptors: ./functions.binpb
  remote:
    - package: hello.v1
      url: http://127.0.0.1:9080
YAML
npx shoal serve --config shoal.yaml # serves at http://127.0.0.1:8080, state in .shoal/
\`\`\`
`;

/** The files `init` writes, by path inside the project. */
export function projectFiles(name: string, options: InitOptions = {}): Record<string, string> {
  return {
    "package.json": packageJson(name, options.from),
    "buf.yaml": bufYaml,
    "buf.gen.yaml": bufGenYaml,
    "tsconfig.json": tsconfig,
    ".gitignore": gitignore,
    "README.md": readme(name),
    "proto/hello/v1/counter.proto": counterProto,
    "src/counter.ts": counterTs,
    "src/module.ts": moduleTs,
    "src/serve-functions.ts": serveFunctionsTs,
    "src/counter.test.ts": counterTestTs,
  };
}

/**
 * Writes a new project into `dir` (created if missing; refused if it holds
 * anything). Returns the paths written, relative to `dir`.
 */
export function init(dir: string, options: InitOptions = {}): string[] {
  const root = resolve(dir);
  if (existsSync(root) && readdirSync(root).length > 0) {
    throw new InitError(`${dir} is not empty; give init a new or empty folder`);
  }
  // npm package names are lower case, without spaces.
  const name = basename(root)
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, "-");
  const files = projectFiles(name, options);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return Object.keys(files);
}
