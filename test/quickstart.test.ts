// The README's quick start, followed to the letter: its proto, its two source
// files and its client snippet, generated with the build's buf invocation,
// type-checked, run with `shoal dev`, and called with its curl line.
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { type Child, repoRoot, shoalBin, startShoalDev } from "./support/processes.js";

const readme = readFileSync(`${repoRoot}README.md`, "utf8");
const blocks = (lang: string) => [...readme.matchAll(new RegExp(`\`\`\`${lang}\\n([\\s\\S]*?)\`\`\``, "g"))].map((m) => m[1] as string);
const dir = `.quickstart-${process.pid}/hello`;
const abs = join(repoRoot, dir);
let child: Child | undefined;

afterAll(() => {
  child?.process.kill("SIGKILL");
  rmSync(join(repoRoot, `.quickstart-${process.pid}`), { recursive: true, force: true });
});

it("works as the README tells it", { timeout: 120_000 }, async () => {
  const [proto] = blocks("proto");
  const [counter, moduleFile, client] = blocks("ts");
  if (proto === undefined || counter === undefined || moduleFile === undefined || client === undefined)
    throw new Error("README lost a snippet");
  mkdirSync(join(abs, "proto/hello/v1"), { recursive: true });
  mkdirSync(join(abs, "src"), { recursive: true });
  writeFileSync(join(abs, "proto/hello/v1/counter.proto"), proto);
  writeFileSync(join(abs, "src/counter.ts"), counter);
  writeFileSync(join(abs, "src/module.ts"), moduleFile);
  writeFileSync(join(abs, "src/client.ts"), client);

  // Step 2, as scripts/build.mjs runs it for a folder under examples/.
  const config = { version: "v2", modules: [{ path: "proto" }, { path: `${dir}/proto` }] };
  const paths = readdirSync(join(abs, "proto")).flatMap((entry) => ["--path", `${dir}/proto/${entry}`]);
  execFileSync(
    `${repoRoot}node_modules/.bin/buf`,
    ["generate", ".", "--config", JSON.stringify(config), "--template", "buf.gen.yaml", ...paths, "-o", dir],
    {
      cwd: repoRoot,
      env: { ...process.env, PATH: `${repoRoot}node_modules/.bin:${process.env.PATH}` },
    },
  );

  // Step 3: the implementation type-checks against the generated interface.
  writeFileSync(
    join(abs, "tsconfig.json"),
    JSON.stringify({
      extends: "../../tsconfig.base.json",
      compilerOptions: { noEmit: true, composite: false, declaration: false, declarationMap: false },
      include: ["src"],
    }),
  );
  execFileSync(`${repoRoot}node_modules/.bin/tsc`, ["-p", join(abs, "tsconfig.json")], { cwd: repoRoot, encoding: "utf8" });

  // Step 4.
  const started = await startShoalDev(join(abs, "src/module.ts"), [
    "--port",
    "0",
    "--data-dir",
    join(abs, ".shoal"),
    "--log-level",
    "error",
  ]);
  child = started.child;

  // Step 5: the curl line and its promised output.
  const lines = readme.split("\n");
  // The last one: the new-project path above the walk-through has the same line (test/standalone-project.test.ts runs it).
  const curlAt = lines.findLastIndex((l) => l.startsWith("curl -s http://127.0.0.1:8080/hello.v1.Counter/Add"));
  const curl = (lines[curlAt] as string).replace("http://127.0.0.1:8080", started.url);
  expect(execFileSync("bash", ["-c", curl], { encoding: "utf8" }).trim()).toBe((lines[curlAt + 1] as string).replace(/^# /, ""));
  const call = execFileSync(process.execPath, [shoalBin, "call", "hello.v1.Counter/Get", '{"name":"ada"}', "--url", started.url], {
    encoding: "utf8",
  });
  expect(JSON.parse(call)).toEqual({ value: 2 });
});
