import { resolve } from "node:path";
import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ConfigError, defaults, serveConfig, serveUntilSignal, validateConfig } from "@shoal/runtime";
import { headers as shoalHeaders } from "@shoal/sdk";
import { Admin } from "@shoal/sdk/internal";
import { Command, InvalidArgumentError } from "commander";
import { importWithTypeScript, loadModule, missingHandlers } from "./load-module.js";
import { statusJson, statusText } from "./status-format.js";

function intArg(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`"${value}" is not an integer`);
  return n;
}

/** The address the commands that talk to a node use when `--url` is not given: the ingress defaults. */
const defaultUrl = `http://${defaults.ingress.host}:${defaults.ingress.port}`;

/**
 * Asks a node's `shoal.v1.Admin` service through its generated client. A node
 * that cannot be reached becomes a CliError naming the address.
 */
async function askAdmin<T>(url: string, ask: (admin: Client<typeof Admin>) => Promise<T>): Promise<T> {
  const admin = createClient(Admin, createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: true }));
  try {
    return await ask(admin);
  } catch (err) {
    // connect-node keeps the socket's error (ECONNREFUSED, ENOTFOUND, ...) as the cause; a server's answer has none.
    const cause = err instanceof ConnectError ? err.cause : undefined;
    if (err instanceof ConnectError && err.code === Code.Unavailable && cause instanceof Error && "code" in cause) {
      throw new CliError(`cannot reach ${url}: ${cause.message}`);
    }
    throw err;
  }
}

/** A mistake on the command line or a failure the CLI describes itself: printed without a stack or class name. */
class CliError extends Error {
  override name = "CliError";
}

function fail(err: unknown): never {
  const message =
    err instanceof ErrorAnswer
      ? describeErrorAnswer(err.message)
      : err instanceof ConnectError
        ? `${codeToString(err.code)}: ${err.rawMessage}`
        : err instanceof ConfigError ||
            err instanceof CliError ||
            (err instanceof Error && (err.name === "ImplementError" || err.name === "InitError"))
          ? err.message
          : err instanceof Error
            ? `${err.name}: ${err.message}`
            : String(err);
  process.stderr.write(`shoal: ${message}\n`);
  process.exit(1);
}

/** The `shoal` command line. */
export function createCli(): Command {
  const program = new Command("shoal").description("Typed stateful functions: run, call and inspect Shoal functions");

  program
    .command("init")
    .description("write a new project into <dir>: proto, handlers, a test, buf and TypeScript config, npm scripts")
    .argument("<dir>", "the project folder (new or empty)")
    .option("--from <dir>", "depend on the Shoal packages' npm pack tarballs in this folder instead of the registry")
    .action(async (dir: string, opts) => {
      try {
        const { init } = await import("./init.js");
        init(dir, { from: opts.from });
        process.stdout.write(`created ${dir}; next:\n  cd ${dir}\n  npm install\n  npm run generate\n  npm test\n  npm run dev\n`);
      } catch (err) {
        fail(err);
      }
    });

  program
    .command("dev")
    .description("run the runtime and your functions in one process, on the local durable store; egress messages go to stdout")
    .argument("<module>", "file whose default export is module(...) (.ts is fine)")
    .option("-p, --port <port>", "ingress port", intArg, defaults.ingress.port)
    .option("--host <host>", "ingress interface", defaults.ingress.host)
    .option("-d, --data-dir <dir>", "where the local store keeps its files", defaults.storage.directory)
    .option("--shards <n>", "number of shards", intArg, defaults.shards)
    .option("--memory", "keep state in memory only (lost on exit)")
    .option("--max-request-bytes <bytes>", "largest request body the ingress accepts", intArg, defaults.ingress.maxRequestBytes)
    .option("--allow-missing-handlers", "start even if the module lacks handlers; they answer Unimplemented")
    .option("--log-level <level>", "debug, info, warn, error or silent", defaults.logLevel)
    .action(async (modulePath: string, opts) => {
      try {
        const config = validateConfig({
          shards: opts.shards,
          ingress: { host: opts.host, port: opts.port, maxRequestBytes: opts.maxRequestBytes },
          storage: opts.memory ? { backend: "memory" } : { backend: "local", directory: resolve(opts.dataDir) },
          log: { level: opts.logLevel },
        });
        const functions = await loadModule(resolve(modulePath));
        const missing = missingHandlers(functions);
        if (missing.length > 0 && !opts.allowMissingHandlers) {
          throw new CliError(
            `${modulePath} does not implement ${missing.join(", ")}; add them (shoal implement <file> writes stubs) or pass --allow-missing-handlers`,
          );
        }
        // No config file in development: every egress name writes to stdout.
        const node = await serveUntilSignal(config, functions, {
          banner: (url) => `shoal dev: serving ${modulePath} at ${url}\n`,
          anyEgressToStdout: true,
          onCloseError: fail,
        });
        if (missing.length > 0) node.runtime.logger.warn(`not implemented, answered Unimplemented: ${missing.join(", ")}`);
      } catch (err) {
        fail(err);
      }
    });

  program
    .command("serve")
    .description("run a node as configured in shoal.yaml, .ts module included (a container runs shoal-node from @shoal/runtime)")
    .option("-c, --config <file>", "the config file", "shoal.yaml")
    .action(async (opts) => {
      try {
        await serveConfig(opts.config, { command: "shoal serve", importModule: importWithTypeScript, onCloseError: fail });
      } catch (err) {
        fail(err);
      }
    });

  program
    .command("call")
    .description("call a handler with JSON in and JSON out (Connect protocol)")
    .argument("<method>", "service and method, e.g. shop.v1.Cart/AddItem")
    .argument("[json]", "the request as JSON", "{}")
    .option("-u, --url <url>", "the runtime's address", defaultUrl)
    .option("-k, --idempotency-key <key>", "retries with the same key get the first reply")
    .option("--send", "one-way: return once the message is durably accepted")
    .option("--delay <ms>", "with --send, deliver after this many milliseconds", intArg)
    .action(async (method: string, json: string, opts) => {
      try {
        JSON.parse(json);
      } catch (err) {
        fail(new CliError(`the request is not valid JSON: ${(err as Error).message}`));
      }
      // A person typed this JSON: a misspelt field is a mistake, whatever the ingress accepts from programs.
      const headers: Record<string, string> = { "content-type": "application/json", [shoalHeaders.rejectUnknownFields]: "1" };
      if (opts.idempotencyKey) headers["idempotency-key"] = opts.idempotencyKey;
      if (opts.send) headers["shoal-send"] = "1";
      if (opts.delay !== undefined) headers["shoal-delay-ms"] = String(opts.delay);
      try {
        const res = await postJson(opts.url, method, json, headers);
        const id = res.headers.get("shoal-message-id");
        process.stdout.write(opts.send && id ? `${JSON.stringify({ messageId: id })}\n` : `${res.text}\n`);
      } catch (err) {
        if (err instanceof ErrorAnswer) {
          // The Connect error as it came, for scripts to parse.
          process.stderr.write(`${err.message}\n`);
          process.exit(1);
        }
        fail(err);
      }
    });

  program
    .command("status")
    .description(
      "the node's shards: instances, pending messages (lag), undelivered outbox, storage group commits; on the nats backend, its NATS connection and every live node of the cluster with its shards, lease epochs and lag",
    )
    .option("-u, --url <url>", "the runtime's address", defaultUrl)
    .option("--json", "print the status as JSON (protobuf's canonical JSON of shoal.v1.StatusResponse)")
    .action(async (opts) => {
      try {
        const status = await askAdmin(opts.url, (admin) => admin.status({}));
        process.stdout.write(opts.json ? `${statusJson(status)}\n` : statusText(status, Date.now()));
      } catch (err) {
        fail(err);
      }
    });

  program
    .command("implement")
    .description("add a stub for every handler an implementation file lacks, keeping the code already there")
    .argument("<file>", "the implementation file, e.g. src/cart.ts (created when missing)")
    .option("-g, --gen <file>", "the generated *_shoal.ts file (needed to create a new file)")
    .option("-f, --function <name>", "only this function, e.g. Cart")
    .action(async (file: string, opts) => {
      try {
        const { implement } = await import("./implement.js");
        const result = await implement({ file, generated: opts.gen, functionName: opts.function });
        const what = result.added.length > 0 ? `added ${result.added.join(", ")}` : "every handler is implemented";
        process.stdout.write(`${result.created ? `created ${file}; ` : ""}${what}\n`);
      } catch (err) {
        fail(err);
      }
    });

  const state = program.command("state").description("read instances' committed state");
  state
    .command("get")
    .description("one instance's state as JSON")
    .argument("<function>", "the function type, e.g. shop.v1.Cart")
    .argument("<key>", "the instance key")
    .option("-u, --url <url>", "the runtime's address", defaultUrl)
    .action(async (fn: string, key: string, opts) => {
      try {
        const res = await askAdmin(opts.url, (admin) => admin.getState({ function: fn, key }));
        if (!res.found) throw new CliError(`${fn} ${JSON.stringify(key)} has no state`);
        process.stdout.write(`${res.stateJson}\n`);
      } catch (err) {
        fail(err);
      }
    });
  state
    .command("list")
    .description("the keys of a function type's instances, one a line, in key order, a page at a time")
    .argument("<function>", "the function type, e.g. shop.v1.Cart")
    .option("-u, --url <url>", "the runtime's address", defaultUrl)
    .option("-n, --limit <n>", "at most this many keys (with --all: per page)", intArg, defaults.adminListLimit)
    .option("--after <key>", "only keys after this one (paging)", "")
    .option("--all", "every key: follow the pages to the end")
    .action(async (fn: string, opts) => {
      try {
        let after: string = opts.after;
        for (;;) {
          const res = await askAdmin(opts.url, (admin) => admin.listInstances({ function: fn, limit: opts.limit, after }));
          const keys = res.keys;
          process.stdout.write(keys.map((k) => `${k}\n`).join(""));
          const last = keys.at(-1);
          if (!res.more || last === undefined) break;
          if (opts.all !== true) {
            process.stderr.write(`(more: shoal state list ${fn} --after ${JSON.stringify(last)}, or --all)\n`);
            break;
          }
          after = last;
        }
      } catch (err) {
        fail(err);
      }
    });

  program
    .command("storage")
    .description("the node's data directory")
    .command("backup")
    .description("copy a running node's store into a directory on its machine, consistent as of one moment, while it serves")
    .argument("<directory>", "a new or empty directory on the node's machine (relative: to the node's working directory)")
    .option("-u, --url <url>", "the runtime's address", defaultUrl)
    .action(async (directory: string, opts) => {
      try {
        const res = await askAdmin(opts.url, (admin) => admin.backup({ directory }));
        process.stdout.write(`copied ${res.bytes} bytes to ${res.directory}\n`);
      } catch (err) {
        fail(err);
      }
    });

  program
    .command("dead-letters")
    .description("messages that failed for good: consumed without their effects and kept for inspection")
    .command("list")
    .description("the most recent dead letters, oldest first, one a line: when, target, message id, error, request")
    .option("-u, --url <url>", "the runtime's address", defaultUrl)
    .option("-f, --function <name>", "only this function type's, e.g. bank.v1.Account")
    .option("-n, --limit <n>", "at most this many", intArg, defaults.adminListLimit)
    .action(async (opts) => {
      try {
        const res = await askAdmin(opts.url, (admin) => admin.listDeadLetters({ function: opts.function ?? "", limit: opts.limit }));
        const lines = res.deadLetters.map((d) =>
          [
            new Date(Number(d.deadAtMs)).toISOString(),
            `${d.function}/${JSON.stringify(d.key)}.${d.handler}`,
            d.messageId,
            `${d.code}: ${d.error}`,
            d.requestJson,
          ].join("  "),
        );
        process.stdout.write(lines.map((l) => `${l}\n`).join(""));
        if (res.more) process.stderr.write(`(older dead letters left out: raise --limit)\n`);
      } catch (err) {
        fail(err);
      }
    });

  return program;
}

/** POSTs Connect JSON; a non-2xx answer fails with the server's error body. */
async function postJson(
  base: string,
  method: string,
  body: string,
  headers: Record<string, string> = { "content-type": "application/json" },
) {
  const url = `${base.replace(/\/$/, "")}/${method}`;
  let res: Response;
  try {
    res = await fetch(url, { method: "POST", headers, body });
  } catch (err) {
    // fetch says only "fetch failed"; the reason (ECONNREFUSED, a bad URL, ...) is its cause.
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : err instanceof Error ? err.message : String(err);
    throw new CliError(`cannot reach ${url}: ${cause}`);
  }
  const text = await res.text();
  if (!res.ok) throw new ErrorAnswer(text);
  return { text, headers: res.headers };
}

/** `code: message` of a Connect error body, or the body as it is. */
function describeErrorAnswer(body: string): string {
  try {
    const error = JSON.parse(body) as { code?: string; message?: string };
    if (error.code !== undefined) return `${error.code}: ${error.message ?? ""}`;
  } catch {
    // not JSON
  }
  return body;
}

/** The server answered with an error; its body is the Connect error JSON. */
class ErrorAnswer extends CliError {
  override name = "ErrorAnswer";
}
