// The `shoal` command as users run it: the built bin script (run `npm run
// build` first) in a child process.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
const bin = join(repoRoot, "packages/cli/bin/shoal.js");
const greeterModule = join(repoRoot, "examples/greeter/dist/module.js");

let dir = "";
const children = new Set<ChildProcess>();

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "shoal-cli-"));
});
afterEach(() => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  children.clear();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Exited {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** A running `shoal` process. */
interface Shoal {
  readonly child: ChildProcess;
  /** Resolves with the first match of `pattern` on stdout. */
  waitFor(pattern: RegExp): Promise<RegExpMatchArray>;
  readonly exited: Promise<Exited>;
}

function start(args: readonly string[], cwd = dir): Shoal {
  const child = spawn(process.execPath, [bin, ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  let stdout = "";
  let stderr = "";
  const listeners = new Set<() => void>();
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
    for (const listener of listeners) listener();
  });
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<Exited>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => {
      for (const listener of listeners) listener();
      resolve({ code, stdout, stderr });
    });
  });
  return {
    child,
    exited,
    waitFor: (pattern) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const match = stdout.match(pattern);
          if (match !== null) {
            listeners.delete(check);
            resolve(match);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            listeners.delete(check);
            reject(
              new Error(
                `shoal ${args.join(" ")} exited (${child.exitCode ?? child.signalCode}) before printing ${pattern}:\n${stdout}\n${stderr}`,
              ),
            );
          }
        };
        listeners.add(check);
        check();
      }),
  };
}

/** Runs `shoal` to its end. */
function run(args: readonly string[]): Promise<Exited> {
  return start(args).exited;
}

function writeFile(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** POSTs a Connect JSON request, as curl would. */
async function post(url: string, body: unknown): Promise<{ status: number; json: unknown }> {
  const res = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, json: text === "" ? undefined : JSON.parse(text) };
}

describe("shoal --help", () => {
  it("lists the commands", async () => {
    const { code, stdout } = await run(["--help"]);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^\s+dev \[options\] <module>/m);
    expect(stdout).toMatch(/^\s+serve \[options\]/m);
    expect(stdout).toMatch(/^\s+call \[options\] <method> \[json\]/m);
  });

  it("describes each command's options", async () => {
    const { code, stdout } = await run(["serve", "--help"]);
    expect(code).toBe(0);
    expect(stdout).toContain("-c, --config <file>");
  });
});

describe("shoal serve", () => {
  it("exits 1 naming the key of an invalid config", async () => {
    const path = writeFile("bad-key.yaml", `ingress:\n  prot: 80\nfunctions:\n  module: ${greeterModule}\n`);
    const { code, stderr, stdout } = await run(["serve", "--config", path]);
    expect(code).toBe(1);
    expect(stdout).toBe("");
    expect(stderr).toBe(
      `shoal: ${path}: ingress.prot: unknown key (expected one of: host, port, maxRequestBytes, ignoreUnknownJsonFields, headersTimeoutMs, idleTimeoutMs, shutdownGraceMs)\n`,
    );
  });

  it("exits 1 naming the key of a wrong value", async () => {
    const path = writeFile("bad-port.yaml", "ingress: { port: 99999 }\n");
    const { code, stderr } = await run(["serve", "--config", path]);
    expect(code).toBe(1);
    expect(stderr).toBe(`shoal: ${path}: ingress.port: expected an integer from 0 to 65535, got 99999\n`);
  });

  it("exits 1 on invalid YAML, a missing file and a config without functions.module or functions.remote", async () => {
    const yaml = await run(["serve", "--config", writeFile("broken.yaml", "shards: [1\n")]);
    expect(yaml.code).toBe(1);
    expect(yaml.stderr).toContain("broken.yaml: not valid YAML");

    const missing = await run(["serve", "--config", join(dir, "nowhere.yaml")]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("nowhere.yaml: cannot read the config file: ENOENT");

    const path = writeFile("no-module.yaml", "storage: { backend: memory }\n");
    const noModule = await run(["serve", "--config", path]);
    expect(noModule.code).toBe(1);
    expect(noModule.stderr).toBe(
      `shoal: ${path}: functions: required: functions.module (a module file to run here) or functions.remote (endpoints that serve the functions)\n`,
    );
  });

  it("reads shoal.yaml from the working directory by default", async () => {
    writeFile("shoal.yaml", "shard: 4\n");
    const { code, stderr } = await run(["serve"]);
    expect(code).toBe(1);
    expect(stderr).toMatch(/^shoal: shoal\.yaml: shard: unknown key/);
  });

  it("serves the configured module over Connect JSON, answers `shoal call`, and exits 0 on SIGTERM", async () => {
    const path = writeFile(
      "serve.yaml",
      [
        "storage:",
        "  backend: memory",
        "ingress:",
        "  port: 0",
        "functions:",
        `  module: ${greeterModule}`,
        "log:",
        "  level: warn",
        "",
      ].join("\n"),
    );
    const shoal = start(["serve", "--config", path]);
    const [, url] = await shoal.waitFor(/^shoal serve: listening at (http:\/\/127\.0\.0\.1:\d+)\n/m);
    expect(await post(`${url}/greeter.v1.Greeter/Greet`, { name: "joe" })).toEqual({
      status: 200,
      json: { greeting: "Hello, joe!", times: 1 },
    });
    expect(await post(`${url}/greeter.v1.Greeter/Greet`, { name: "joe" })).toMatchObject({ json: { times: 2 } });
    // a Connect error for an unknown handler
    expect(await post(`${url}/greeter.v1.Greeter/Shout`, { name: "joe" })).toMatchObject({ status: 404 });

    const called = await run(["call", "greeter.v1.Greeter/Count", '{"name":"joe"}', "--url", `${url}`]);
    expect(called).toMatchObject({ code: 0, stdout: '{"times":2}\n' });
    const sent = await run(["call", "greeter.v1.Greeter/Greet", '{"name":"ann"}', "--url", `${url}/`, "--send"]);
    expect(sent.code).toBe(0);
    expect(JSON.parse(sent.stdout)).toEqual({ messageId: expect.any(String) });
    const refused = await run(["call", "greeter.v1.Greeter/Greet", '{"nmae":"ann"}', "--url", `${url}`]);
    expect(refused.code).toBe(1);
    expect(JSON.parse(refused.stderr)).toMatchObject({ code: "invalid_argument" });

    const status = await run(["status", "--url", url as string]);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/^node \S+: 64 of 64 shards open; functions: greeter\.v1\.Greeter\ninstances 2, pending 0/);
    expect(await run(["state", "get", "greeter.v1.Greeter", "joe", "--url", url as string])).toMatchObject({
      code: 0,
      stdout: '{"times":2}\n',
    });
    expect(await run(["state", "list", "greeter.v1.Greeter", "--url", url as string])).toMatchObject({ code: 0, stdout: "ann\njoe\n" });
    const paged = await run(["state", "list", "greeter.v1.Greeter", "--limit", "1", "--url", url as string]);
    expect(paged).toMatchObject({
      code: 0,
      stdout: "ann\n",
      stderr: '(more: shoal state list greeter.v1.Greeter --after "ann", or --all)\n',
    });
    const all = await run(["state", "list", "greeter.v1.Greeter", "--limit", "1", "--all", "--url", url as string]);
    expect(all).toMatchObject({ code: 0, stdout: "ann\njoe\n", stderr: "" });
    const none = await run(["state", "get", "greeter.v1.Greeter", "nobody", "--url", url as string]);
    expect(none).toMatchObject({ code: 1, stderr: 'shoal: greeter.v1.Greeter "nobody" has no state\n' });
    const unknown = await run(["state", "list", "shop.v1.Nothing", "--url", url as string]);
    expect(unknown).toMatchObject({
      code: 1,
      stderr: 'shoal: not_found: no function type "shop.v1.Nothing" runs here (known: greeter.v1.Greeter)\n',
    });

    shoal.child.kill("SIGTERM");
    const exited = await shoal.exited;
    expect(exited.code).toBe(0);
    expect(exited.stderr).toBe("");
  });

  it("closes a connection that sends nothing after ingress.headersTimeoutMs", async () => {
    const path = writeFile(
      "timeouts.yaml",
      `storage: { backend: memory }\ningress: { port: 0, headersTimeoutMs: 100 }\nfunctions: { module: ${greeterModule} }\nlog: { level: warn }\n`,
    );
    const shoal = start(["serve", "--config", path]);
    const [, port] = await shoal.waitFor(/listening at http:\/\/127\.0\.0\.1:(\d+)\n/);
    const silent = connect(Number(port), "127.0.0.1");
    silent.on("error", () => {});
    await new Promise((resolve) => silent.once("close", resolve));
    shoal.child.kill("SIGTERM");
    expect(await shoal.exited).toMatchObject({ code: 0, stderr: "" });
  });

  it("exits 1 when the port is taken", async () => {
    const blocker: Server = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    try {
      const address = blocker.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      const path = writeFile(
        "taken.yaml",
        `storage: { backend: memory }\ningress: { port: ${port} }\nfunctions: { module: ${greeterModule} }\n`,
      );
      const { code, stderr } = await run(["serve", "--config", path]);
      expect(code).toBe(1);
      expect(stderr).toContain("EADDRINUSE");
    } finally {
      blocker.close();
    }
  });
});

describe("shoal dev", () => {
  it("exits 1 when the file's default export is not a module", async () => {
    const path = writeFile("not-a-module.mjs", "export default { greet() {} };\n");
    const { code, stderr } = await run(["dev", path, "--memory", "--port", "0"]);
    expect(code).toBe(1);
    expect(stderr).toContain(`${path}: the default export is not a Shoal module`);
    expect(stderr).toContain("export default module(implement(XFunction, x), ...)");
  });

  it("exits 1 when the file has no default export", async () => {
    const path = writeFile("no-default.mjs", "export const x = 1;\n");
    const { code, stderr } = await run(["dev", path, "--memory", "--port", "0"]);
    expect(code).toBe(1);
    expect(stderr).toContain("the default export is not a Shoal module");
  });

  /** A module implementing the greeter's Greet but not its Count. */
  function partialGreeter(): string {
    return writeFile(
      "partial-greeter.mjs",
      [
        `import { implement, module } from ${JSON.stringify(join(repoRoot, "packages/sdk/dist/index.js"))};`,
        `import { GreeterFunction } from ${JSON.stringify(join(repoRoot, "examples/greeter/dist/gen/greeter/v1/greeter_shoal.js"))};`,
        'export default module(implement(GreeterFunction, { greet: (req) => ({ greeting: "Hi, " + req.name, times: 1 }) }));',
        "",
      ].join("\n"),
    );
  }

  it("exits 1 listing the handlers the module lacks", async () => {
    const path = partialGreeter();
    const { code, stdout, stderr } = await run(["dev", path, "--memory", "--port", "0"]);
    expect(code).toBe(1);
    expect(stdout).toBe("");
    expect(stderr).toBe(
      `shoal: ${path} does not implement greeter.v1.Greeter.Count; add them (shoal implement <file> writes stubs) or pass --allow-missing-handlers\n`,
    );
  });

  it("with --allow-missing-handlers, starts, warns, and answers them Unimplemented", async () => {
    const shoal = start(["dev", partialGreeter(), "--memory", "--port", "0", "--allow-missing-handlers"]);
    const [, url] = await shoal.waitFor(/^shoal dev: serving .* at (http:\/\/127\.0\.0\.1:\d+)\n/m);
    expect(await post(`${url}/greeter.v1.Greeter/Greet`, { name: "ann" })).toMatchObject({ status: 200, json: { greeting: "Hi, ann" } });
    expect(await post(`${url}/greeter.v1.Greeter/Count`, { name: "ann" })).toMatchObject({
      json: { code: "unimplemented", message: "greeter.v1.Greeter has no implementation of Count" },
    });
    shoal.child.kill("SIGTERM");
    const exited = await shoal.exited;
    expect(exited.code).toBe(0);
    expect(exited.stderr).toContain("not implemented, answered Unimplemented: greeter.v1.Greeter.Count");
  });

  it("takes --max-request-bytes and names that limit when a request is over it", async () => {
    const shoal = start(["dev", greeterModule, "--memory", "--port", "0", "--max-request-bytes", "100", "--log-level", "warn"]);
    const [, url] = await shoal.waitFor(/^shoal dev: serving .* at (http:\/\/127\.0\.0\.1:\d+)\n/m);
    expect(await post(`${url}/greeter.v1.Greeter/Greet`, { name: "a".repeat(50) })).toMatchObject({ status: 200 });
    const big = await post(`${url}/greeter.v1.Greeter/Greet`, { name: "a".repeat(200) });
    expect(big).toMatchObject({ json: { code: "resource_exhausted" } });
    expect((big.json as { message: string }).message).toMatch(/^the request of \d+ bytes is larger than maxRequestBytes \(100 bytes\)/);
    shoal.child.kill("SIGTERM");
    expect((await shoal.exited).code).toBe(0);
  });

  it("refuses a flag that is not a number", async () => {
    const { code, stderr } = await run(["dev", "module.ts", "--port", "eighty"]);
    expect(code).toBe(1);
    expect(stderr).toContain('"eighty" is not an integer');
  });

  it("writes every egress to stdout, configured or not", async () => {
    const shoal = start(["dev", join(repoRoot, "examples/shopping-cart/dist/module.js"), "--memory", "--port", "0", "--log-level", "warn"]);
    const [, url] = await shoal.waitFor(/^shoal dev: serving .* at (http:\/\/127\.0\.0\.1:\d+)\n/m);
    await post(`${url}/shop.v1.Inventory/Restock`, { sku: "socks", quantity: 5 });
    await post(`${url}/shop.v1.Cart/AddItem`, { userId: "joe", sku: "socks", quantity: 2 });
    const checkout = await post(`${url}/shop.v1.Cart/Checkout`, { userId: "joe" });
    expect(checkout).toMatchObject({ status: 200, json: { items: { socks: 2 } } });
    const [line] = await shoal.waitFor(/^\{"egress":"orders".*\n/m);
    expect(JSON.parse(line)).toMatchObject({
      egress: "orders",
      type: "shop.v1.OrderPlaced",
      message: { userId: "joe", items: { socks: 2 } },
    });
    shoal.child.kill("SIGTERM");
    expect((await shoal.exited).code).toBe(0);
  });

  it("runs a TypeScript module without a build step", async () => {
    const shoal = start(["dev", join(repoRoot, "examples/greeter/src/module.ts"), "--memory", "--port", "0", "--log-level", "warn"]);
    const [, url] = await shoal.waitFor(/^shoal dev: serving .*module\.ts at (http:\/\/127\.0\.0\.1:\d+)\n/m);
    expect(await post(`${url}/greeter.v1.Greeter/Greet`, { name: "ann" })).toEqual({
      status: 200,
      json: { greeting: "Hello, ann!", times: 1 },
    });
    shoal.child.kill("SIGTERM");
    expect((await shoal.exited).code).toBe(0);
  });
});

describe("shoal call", () => {
  it("refuses an unknown JSON field, naming it, even where the ingress ignores them", async () => {
    const path = writeFile(
      "lenient.yaml",
      `storage: { backend: memory }\ningress: { port: 0, ignoreUnknownJsonFields: true }\nfunctions: { module: ${greeterModule} }\nlog: { level: warn }\n`,
    );
    const shoal = start(["serve", "--config", path]);
    const [, url] = await shoal.waitFor(/^shoal serve: listening at (http:\/\/127\.0\.0\.1:\d+)\n/m);
    // A program's request with a field this node does not know yet: accepted, as configured.
    expect(await post(`${url}/greeter.v1.Greeter/Greet`, { name: "joe", nickname: "j" })).toMatchObject({ status: 200 });
    const typed = await run(["call", "greeter.v1.Greeter/Greet", '{"name":"ann","nmae":"ann"}', "--url", url as string]);
    expect(typed.code).toBe(1);
    expect(JSON.parse(typed.stderr)).toEqual({
      code: "invalid_argument",
      message: 'cannot decode message greeter.v1.GreetRequest from JSON: key "nmae" is unknown',
    });
    expect(await run(["state", "get", "greeter.v1.Greeter", "ann", "--url", url as string])).toMatchObject({ code: 1 });
    shoal.child.kill("SIGTERM");
    expect((await shoal.exited).code).toBe(0);
  });

  it("exits 1 on a request that is not JSON", async () => {
    const { code, stdout, stderr } = await run(["call", "greeter.v1.Greeter/Greet", "{name: joe}"]);
    expect(code).toBe(1);
    expect(stdout).toBe("");
    expect(stderr).toMatch(/^shoal: the request is not valid JSON: /);
  });

  it("exits 1 naming the address it cannot reach", async () => {
    const port = await closedPort();
    const { code, stderr } = await run(["call", "greeter.v1.Greeter/Greet", "{}", "--url", `http://127.0.0.1:${port}`]);
    expect(code).toBe(1);
    expect(stderr).toBe(`shoal: cannot reach http://127.0.0.1:${port}/greeter.v1.Greeter/Greet: connect ECONNREFUSED 127.0.0.1:${port}\n`);
  });
});

describe("shoal status, state and dead-letters (the shoal.v1.Admin client)", () => {
  it("exit 1 naming the address they cannot reach", async () => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    for (const args of [
      ["status"],
      ["state", "get", "greeter.v1.Greeter", "joe"],
      ["state", "list", "greeter.v1.Greeter"],
      ["dead-letters", "list"],
    ]) {
      const { code, stdout, stderr } = await run([...args, "--url", url]);
      expect({ code, stdout, stderr }).toEqual({
        code: 1,
        stdout: "",
        stderr: `shoal: cannot reach ${url}: connect ECONNREFUSED ${url.slice(7)}\n`,
      });
    }
  });

  it("print the node's Connect error as code: message", async () => {
    const path = writeFile(
      "admin.yaml",
      `storage: { backend: memory }\ningress: { port: 0 }\nfunctions: { module: ${greeterModule} }\nlog: { level: warn }\n`,
    );
    const shoal = start(["serve", "--config", path]);
    const [, url] = await shoal.waitFor(/^shoal serve: listening at (http:\/\/127\.0\.0\.1:\d+)\n/m);
    const empty = await run(["state", "get", "greeter.v1.Greeter", "", "--url", url as string]);
    expect(empty).toMatchObject({ code: 1, stderr: "shoal: invalid_argument: key is empty\n" });
    const letters = await run(["dead-letters", "list", "--function", "shop.v1.Nothing", "--url", url as string]);
    expect(letters).toMatchObject({ code: 1, stderr: expect.stringMatching(/^shoal: not_found: .*shop\.v1\.Nothing/) });
    expect(await run(["dead-letters", "list", "--url", url as string])).toMatchObject({ code: 0, stdout: "" });
    shoal.child.kill("SIGTERM");
    expect((await shoal.exited).code).toBe(0);
  });
});

/** A port that was free a moment ago: nothing listens there. */
async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const address = probe.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}
