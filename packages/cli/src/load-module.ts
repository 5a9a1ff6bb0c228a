import { loadModule as loadJavaScriptOrImported } from "@shoal/runtime";
import type { ShoalModule } from "@shoal/sdk";

/**
 * Imports a module file, TypeScript through tsx, so `shoal dev src/module.ts`
 * needs no build step. tsx lives here, not in `@shoal/runtime`: a serving
 * node runs built JavaScript and needs no TypeScript tooling.
 */
export async function importWithTypeScript(url: string): Promise<{ default?: unknown }> {
  if (/\.[mc]?tsx?$/.test(url)) {
    const { tsImport } = await import("tsx/esm/api");
    return (await tsImport(url, import.meta.url)) as { default?: unknown };
  }
  return (await import(url)) as { default?: unknown };
}

/** Loads a module file (`export default module(...)`), `.ts` included. */
export function loadModule(path: string): Promise<ShoalModule> {
  return loadJavaScriptOrImported(path, importWithTypeScript);
}

/**
 * The handlers a module's implementations lack, as `package.Service.Method`.
 * The runtime answers them Unimplemented.
 */
export function missingHandlers(functions: ShoalModule): string[] {
  return functions.implementations.flatMap(({ fn, handlers }) =>
    [...fn.handlers.values()]
      .filter((info) => typeof (handlers as Record<string, unknown>)[info.localName] !== "function")
      .map((info) => `${fn.typeName}.${info.name}`),
  );
}
