// Type-checks code a user would write, as if it lived in
// examples/shopping-cart/src: the example's sources (generated code and
// implementations) are copied into a temporary folder inside this package with
// the files under test beside them, so `./gen/shop/v1/cart_shoal.js` and
// `./cart.js` resolve, and `@shoal/*` resolve through node_modules to the built
// packages (run `npm run build` first), as in a user's project. The copy keeps
// the example's own folder untouched, so a concurrent `tsc -b` never compiles
// the temporary files.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { type Diagnostic, Project, ts } from "ts-morph";

/** The monorepo root. */
export const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
const tmpRoot = fileURLToPath(new URL("../.typecheck-tmp", import.meta.url));
const exampleSrc = join(repoRoot, "examples/shopping-cart/src");

/** A throwaway TypeScript project. */
export interface TypecheckProject {
  /** The diagnostics of one file, as `name:line: message`. */
  diagnosticsOf(name: string): string[];
  /** Removes the temporary folder. */
  remove(): void;
}

/**
 * Writes `files` (name -> source) beside a copy of the shopping-cart example's
 * sources and loads them under the repository's strict options.
 */
export function createTypecheckProject(files: Readonly<Record<string, string>>): TypecheckProject {
  mkdirSync(tmpRoot, { recursive: true });
  const dir = mkdtempSync(join(tmpRoot, "run-"));
  const remove = () => {
    rmSync(dir, { recursive: true, force: true });
    if (existsSync(tmpRoot) && readdirSync(tmpRoot).length === 0) rmSync(tmpRoot, { recursive: true, force: true });
  };
  try {
    cpSync(exampleSrc, dir, { recursive: true, filter: (source) => !source.endsWith(".test.ts") });
    for (const [name, content] of Object.entries(files)) {
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
    const project = new Project({ tsConfigFilePath: join(dir, "tsconfig.json") });
    return {
      diagnosticsOf: (name) =>
        project
          .getSourceFileOrThrow(join(dir, name))
          .getPreEmitDiagnostics()
          .map((d) => format(d)),
      remove,
    };
  } catch (err) {
    remove();
    throw err;
  }
}

function format(diagnostic: Diagnostic): string {
  const text = ts.flattenDiagnosticMessageText(diagnostic.compilerObject.messageText, "\n");
  return `${diagnostic.getSourceFile()?.getBaseName() ?? ""}:${diagnostic.getLineNumber() ?? 0}: ${text}`;
}
