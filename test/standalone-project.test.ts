// A project outside this workspace, as a user gets it: the packages packed with
// npm pack, `shoal init` into a folder under the system's temp dir, npm install
// of the tarballs (registry for the rest), then the project's own generate,
// typecheck, test and dev scripts, and curl against the running dev server.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { repoRoot, shoalBin } from "./support/processes.js";

const work = mkdtempSync(join(tmpdir(), "shoal-standalone-"));
const packs = join(work, "packs");
const app = join(work, "my-app");
let dev: ChildProcess | undefined;

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

afterAll(() => {
  // dev runs as npm -> sh -> node: its process group goes as one.
  if (dev?.pid !== undefined && dev.exitCode === null) process.kill(-dev.pid, "SIGKILL");
  rmSync(work, { recursive: true, force: true });
});

/** Starts `npm run dev` in its own process group and resolves with the address its banner prints. */
function startDev(args: string[]): Promise<string> {
  const child = spawn("npm", ["run", "dev", "--", ...args], { cwd: app, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  dev = child;
  let out = "";
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    out += chunk;
  });
  return new Promise((resolve, reject) => {
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      out += chunk;
      const match = out.match(/serving .* at (http:\/\/\S+)/);
      if (match) resolve(match[1] as string);
    });
    child.once("exit", (code) => reject(new Error(`npm run dev exited with ${code} before serving:\n${out}`)));
  });
}

it("is created by shoal init, installs from the packed tarballs, and generates, type-checks, tests and serves on its own", {
  timeout: 300_000,
}, async () => {
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

  const url = await startDev(["--port", "0", "--log-level", "error"]);
  const curl = (path: string, body: string) =>
    execFileSync("curl", ["-s", `${url}/${path}`, "-H", "content-type: application/json", "-d", body], { encoding: "utf8" });
  // The README's new-project curl line (the first of its two, the walk-through's is the other), as a user pastes it.
  const readmeCurl = readFileSync(join(repoRoot, "README.md"), "utf8")
    .split("\n")
    .find((l) => l.startsWith("curl -s http://127.0.0.1:8080/hello.v1.Counter/Add"));
  if (readmeCurl === undefined) throw new Error("README lost the new project's curl line");
  const pasted = execFileSync("bash", ["-c", readmeCurl.replace("http://127.0.0.1:8080", url)], { encoding: "utf8" });
  expect(JSON.parse(pasted)).toEqual({ value: 2 });
  expect(JSON.parse(curl("hello.v1.Counter/Add", '{"name":"ada","delta":3}'))).toEqual({ value: 5 });
  expect(JSON.parse(curl("hello.v1.Counter/Get", '{"name":"ada"}'))).toEqual({ value: 5 });
});
