import { resolve } from "node:path";
import { Command, InvalidArgumentError } from "commander";
import { ConfigError, loadConfig, type ShoalConfig, validateConfig } from "./config.js";
import { loadModule, type StartNodeOptions, startNode } from "./run-node.js";

function intArg(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`"${value}" is not an integer`);
  return n;
}

async function runUntilSignal(config: ShoalConfig, modulePath: string, banner: (url: string) => string, options?: StartNodeOptions) {
  const functions = await loadModule(modulePath);
  const node = await startNode(config, functions, options);
  process.stdout.write(banner(node.server.url));
  const stop = async () => {
    try {
      await node.close();
    } catch (err) {
      fail(err);
    }
    process.exit(0);
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

/** A mistake on the command line or a failure the CLI describes itself: printed without a stack or class name. */
class CliError extends Error {
  override name = "CliError";
}

function fail(err: unknown): never {
  const message =
    err instanceof ConfigError || err instanceof CliError
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
    .command("dev")
    .description("run the runtime and your functions in one process, on the local durable store; egress messages go to stdout")
    .argument("<module>", "file whose default export is module(...) (.ts is fine)")
    .option("-p, --port <port>", "ingress port", intArg, 8080)
    .option("--host <host>", "ingress interface", "127.0.0.1")
    .option("-d, --data-dir <dir>", "where the local store keeps its files", ".shoal")
    .option("--shards <n>", "number of shards", intArg, 64)
    .option("--memory", "keep state in memory only (lost on exit)")
    .option("--snapshot-every <records>", "records after which a shard writes a snapshot", intArg, 10_000)
    .option("--log-level <level>", "debug, info, warn, error or silent", "info")
    .action(async (modulePath: string, opts) => {
      try {
        const config = validateConfig({
          shards: opts.shards,
          ingress: { host: opts.host, port: opts.port },
          storage: opts.memory ? { backend: "memory" } : { backend: "local", directory: resolve(opts.dataDir) },
          snapshotEvery: opts.snapshotEvery,
          log: { level: opts.logLevel },
        });
        // No config file in development: every egress name writes to stdout.
        await runUntilSignal(config, resolve(modulePath), (url) => `shoal dev: serving ${modulePath} at ${url}\n`, {
          anyEgressToStdout: true,
        });
      } catch (err) {
        fail(err);
      }
    });

  program
    .command("serve")
    .description("run a node as configured in shoal.yaml (the container's entry point)")
    .option("-c, --config <file>", "the config file", "shoal.yaml")
    .action(async (opts) => {
      try {
        const config = loadConfig(opts.config);
        if (config.functions.module === undefined) throw new ConfigError(`${opts.config}: functions.module: required (the file to run)`);
        await runUntilSignal(config, config.functions.module, (url) => `shoal serve: listening at ${url}\n`);
      } catch (err) {
        fail(err);
      }
    });

  program
    .command("call")
    .description("call a handler with JSON in and JSON out (Connect protocol)")
    .argument("<method>", "service and method, e.g. shop.v1.Cart/AddItem")
    .argument("[json]", "the request as JSON", "{}")
    .option("-u, --url <url>", "the runtime's address", "http://127.0.0.1:8080")
    .option("-k, --idempotency-key <key>", "retries with the same key get the first reply")
    .option("--send", "one-way: return once the message is durably accepted")
    .option("--delay <ms>", "with --send, deliver after this many milliseconds", intArg)
    .action(async (method: string, json: string, opts) => {
      try {
        JSON.parse(json);
      } catch (err) {
        fail(new CliError(`the request is not valid JSON: ${(err as Error).message}`));
      }
      const headers: Record<string, string> = { "content-type": "application/json" };
      if (opts.idempotencyKey) headers["idempotency-key"] = opts.idempotencyKey;
      if (opts.send) headers["shoal-send"] = "1";
      if (opts.delay !== undefined) headers["shoal-delay-ms"] = String(opts.delay);
      const url = `${opts.url.replace(/\/$/, "")}/${method}`;
      try {
        let res: Response;
        try {
          res = await fetch(url, { method: "POST", headers, body: json });
        } catch (err) {
          // fetch says only "fetch failed"; the reason (ECONNREFUSED, a bad URL, ...) is its cause.
          const cause =
            err instanceof Error && err.cause instanceof Error ? err.cause.message : err instanceof Error ? err.message : String(err);
          throw new CliError(`cannot reach ${url}: ${cause}`);
        }
        const text = await res.text();
        if (!res.ok) {
          process.stderr.write(`${text}\n`);
          process.exit(1);
        }
        const id = res.headers.get("shoal-message-id");
        process.stdout.write(opts.send && id ? `${JSON.stringify({ messageId: id })}\n` : `${text}\n`);
      } catch (err) {
        fail(err);
      }
    });

  return program;
}
