// A project outside this workspace, as a user gets it: the packages packed with
// npm pack, `shoal init` into a folder under the system's temp dir, npm install
// of the tarballs (registry for the rest), then the project's own generate,
// typecheck, test and dev scripts, and curl against the running dev server;
// then its serve-functions script as a remote function endpoint, and curl
// against the project's own `shoal serve` with no user code, calling it.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { repoRoot, shoalBin } from "./support/processes.js";

const work = mkdtempSync(join(tmpdir(), "shoal-standalone-"));
const packs = join(work, "packs");
const app = join(work, "my-app");
const children: ChildProcess[] = [];

// npm run sets npm_* variables for the workspace (its prefix, its config);
// the new project's npm must see none of them, as in a fresh shell.
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith("npm_")));
function npm(args: string[], cwd: string): string {
  try {
    return execFileSync("npm", args, { cwd, env, encoding: "utf8", stdio: "pipe" });
  } catch (err) {
    const { stdout, stderr } = err as { stdout?: string; stderr?: string };
    throw new Error(`npm ${args.join(" ")} failed in ${cwd}:\n${stdout ?? ""}\n${stderr ?? ""}`);
  }
}

beforeAll(() => {
  mkdirSync(packs);
  npm(
    [
      "pack",
      "--silent",
      "--pack-destination",
      packs,
      ...["sdk", "protoc-gen-shoal", "runtime", "cli", "testing"].flatMap((p) => ["-w", `packages/${p}`]),
    ],
    repoRoot,
  );
  // Not a workspace (the repository itself never runs it): packed by its folder.
  npm(["pack", "--silent", "--pack-destination", packs, join(repoRoot, "packages/create-shoal")], repoRoot);
}, 120_000);

afterAll(() => {
  // npm run starts npm -> sh -> node: each process group goes as one.
  for (const child of children) if (child.pid !== undefined && child.exitCode === null) process.kill(-child.pid, "SIGKILL");
  rmSync(work, { recursive: true, force: true });
});

/**
 * Starts `command` in the project, in its own process group, and resolves
 * with the address its banner prints (the first group of `banner`).
 */
function startInApp(command: string, args: string[], banner: RegExp, extraEnv: NodeJS.ProcessEnv = {}): Promise<string> {
  const child = spawn(command, args, { cwd: app, env: { ...env, ...extraEnv }, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let out = "";
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    out += chunk;
  });
  return new Promise((resolve, reject) => {
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      out += chunk;
      const match = out.match(banner);
      if (match) resolve(match[1] as string);
    });
    child.once("exit", (code) => reject(new Error(`${command} ${args.join(" ")} exited with ${code} before serving:\n${out}`)));
  });
}

it("is created by shoal init, installs from the packed tarballs, generates, type-checks, tests and serves on its own, and serves its functions to a shoal serve", {
  timeout: 300_000,
}, async () => {
  execFileSync(process.execPath, [shoalBin, "init", app, "--from", packs], { env, encoding: "utf8" });
  npm(["install", "--no-audit", "--no-fund", "--prefer-offline"], app);

  // Every Shoal package, nested ones included, is the packed one: none came from the registry.
  const lock = JSON.parse(readFileSync(join(app, "package-lock.json"), "utf8")) as {
    packages: Record<string, { resolved?: string }>;
  };
  const shoal = Object.entries(lock.packages).filter(([path]) => path.includes("node_modules/@shoal/"));
  expect(shoal.map(([path]) => path).sort()).toEqual(
    ["cli", "protoc-gen-shoal", "runtime", "sdk", "testing"].map((p) => `node_modules/@shoal/${p}`),
  );
  for (const [, entry] of shoal) expect(entry.resolved).toMatch(/^file:/);

  npm(["run", "generate"], app);
  npm(["run", "typecheck"], app);
  expect(npm(["test"], app)).toMatch(/1 passed/);

  const url = await startInApp("npm", ["run", "dev", "--", "--port", "0", "--log-level", "error"], /serving .* at (http:\/\/\S+)/);
  const curl = (path: string, body: string, base = url) =>
    execFileSync("curl", ["-s", `${base}/${path}`, "-H", "content-type: application/json", "-d", body], { encoding: "utf8" });
  // The README's new-project curl line (the first of its two, the walk-through's is the other), as a user pastes it.
  const readmeCurl = readFileSync(join(repoRoot, "README.md"), "utf8")
    .split("\n")
    .find((l) => l.startsWith("curl -s http://127.0.0.1:8080/hello.v1.Counter/Add"));
  if (readmeCurl === undefined) throw new Error("README lost the new project's curl line");
  const pasted = execFileSync("bash", ["-c", readmeCurl.replace("http://127.0.0.1:8080", url)], { encoding: "utf8" });
  expect(JSON.parse(pasted)).toEqual({ value: 2 });
  expect(JSON.parse(curl("hello.v1.Counter/Add", '{"name":"ada","delta":3}'))).toEqual({ value: 5 });
  expect(JSON.parse(curl("hello.v1.Counter/Get", '{"name":"ada"}'))).toEqual({ value: 5 });

  // Remote: the project's serve-functions script is the endpoint; the
  // project's own shoal serve, with the descriptor set its README builds and
  // no code of the project, runs the node that calls it.
  const endpointUrl = await startInApp(
    "npm",
    ["run", "serve-functions"],
    /serving shoal\.v1\.FunctionService for hello\.v1\.Counter at (http:\/\/\S+)/,
    { PORT: "0" },
  );
  execFileSync("npx", ["buf", "build", "-o", "functions.binpb"], { cwd: app, env, stdio: "pipe" });
  writeFileSync(
    join(app, "shoal.yaml"),
    `ingress: { port: 0 }
storage: { directory: ./remote-data }
functions:
  descriptors: ./functions.binpb
  remote:
    - package: hello.v1
      url: ${endpointUrl}
log: { level: warn }
`,
  );
  const node = await startInApp(
    join(app, "node_modules/.bin/shoal"),
    ["serve", "--config", "shoal.yaml"],
    /shoal serve: listening at (http:\/\/\S+)/,
  );
  expect(JSON.parse(curl("hello.v1.Counter/Add", '{"name":"ada","delta":2}', node))).toEqual({ value: 2 });
  expect(JSON.parse(curl("hello.v1.Counter/Add", '{"name":"ada","delta":4}', node))).toEqual({ value: 6 });
  expect(JSON.parse(curl("hello.v1.Counter/Get", '{"name":"ada"}', node))).toEqual({ value: 6 });
});

it("is created the same by npm create shoal (the create-shoal package, from its tarball)", { timeout: 300_000 }, () => {
  const created = join(work, "created-app");
  // What `npm create shoal created-app` runs, with the packed packages instead of the registry's.
  const tarballs = ["create-shoal", "shoal-cli", "shoal-runtime", "shoal-sdk"].map((p) => `--package=${join(packs, `${p}-0.1.0.tgz`)}`);
  const out = npm(["exec", "--yes", "--prefer-offline", ...tarballs, "--", "create-shoal", created, "--from", packs], work);
  expect(out).toContain(`created ${created}; next:`);
  const initialized = join(work, "initialized-app");
  execFileSync(process.execPath, [shoalBin, "init", initialized, "--from", packs], { env });
  const files = (dir: string) => readdirSync(dir, { recursive: true, encoding: "utf8" }).sort();
  expect(files(created)).toEqual(files(initialized));
  const pkg = JSON.parse(readFileSync(join(created, "package.json"), "utf8")) as { scripts: Record<string, string> };
  expect(pkg.scripts["serve-functions"]).toBe("tsc && node dist/serve-functions.js");
});
