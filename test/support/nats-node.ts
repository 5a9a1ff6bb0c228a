// A `shoal-node` (the built bin) serving the bank on the nats backend, for the
// cluster tests: its config written into `dir`, its local store under it.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Child, repoRoot, shoalBin, start } from "./processes.js";

const shoalNode = join(repoRoot, "packages/runtime/bin/shoal-node.js");
const bankModule = join(repoRoot, "examples/bank/dist/module.js");

/** What `startBankNode` is given. */
export interface BankNodeOptions {
  readonly dir: string;
  readonly servers: readonly string[];
  readonly port: number;
  readonly name?: string;
  /** More top-level lines of shoal.yaml, e.g. `cluster: { leaseMs: 60000 }`. */
  readonly extra?: readonly string[];
  /** More keys of its `storage` mapping, e.g. `user: shoal, passwordEnv: NATS_PASSWORD`. */
  readonly storageExtra?: string;
  /** More environment variables of the process. */
  readonly env?: NodeJS.ProcessEnv;
}

/** Starts the node with 4 shards on `servers` (R1), without waiting for it: its process. */
export function startBankNode(options: BankNodeOptions): Child {
  const name = options.name ?? "node";
  const config = join(options.dir, `${name}.yaml`);
  const storageExtra = options.storageExtra === undefined ? "" : `, ${options.storageExtra}`;
  writeFileSync(
    config,
    [
      "shards: 4",
      `storage: { backend: nats, servers: ${JSON.stringify(options.servers)}, directory: ${name}-store, replicas: 1${storageExtra} }`,
      `ingress: { port: ${options.port} }`,
      `functions: { module: ${bankModule} }`,
      "log: { level: warn }",
      ...(options.extra ?? []),
      "",
    ].join("\n"),
  );
  return start(process.execPath, [shoalNode, "--config", config], { cwd: options.dir, env: options.env });
}

/** Starts the node with 4 shards on `servers` (R1) and resolves once it listens, with its ingress URL. */
export async function startBankNodeOnNats(options: BankNodeOptions): Promise<{ child: Child; url: string }> {
  const child = startBankNode(options);
  const [, url] = await child.waitFor(/^shoal-node: listening at (http:\/\/127\.0\.0\.1:\d+)\n/m, 60_000);
  return { child, url: url as string };
}

/** Runs the `shoal` command and resolves with its stdout; rejects with its stderr when it exits non-zero. */
export async function shoal(args: readonly string[]): Promise<string> {
  const cli = start(process.execPath, [shoalBin, ...args]);
  const code = await cli.exited;
  if (code !== 0) throw new Error(`shoal ${args.join(" ")} exited ${code}: ${cli.stderr()}`);
  return cli.stdout();
}
