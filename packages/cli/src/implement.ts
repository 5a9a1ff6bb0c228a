import { existsSync } from "node:fs";
import { basename, dirname, relative, resolve } from "node:path";
import type { InterfaceDeclaration, ObjectLiteralExpression, Project, SourceFile } from "ts-morph";

/** Options of `implement`. */
export interface ImplementOptions {
  /** The implementation file; created when it does not exist. */
  readonly file: string;
  /**
   * The generated `*_shoal.ts` file. Needed to create a new implementation
   * file; an existing one finds its handler interfaces through its imports.
   */
  readonly generated?: string;
  /** Only this function (the service name, e.g. `Cart`). Default: every function of `generated`. */
  readonly functionName?: string;
}

/** What `implement` did. */
export interface ImplementResult {
  readonly created: boolean;
  /** `variable.handler` for each stub added. */
  readonly added: readonly string[];
}

/** A problem `implement` cannot work around: the message says what to do. */
export class ImplementError extends Error {
  override name = "ImplementError";
}

/**
 * Adds a stub for every handler an implementation lacks, keeping the code
 * already there. Each stub throws `ShoalError(Code.Unimplemented, ...)`, so the
 * file compiles and a call to the handler says what is missing. It finds the
 * objects to complete by their declared type: `const cart: CartHandlers = {...}`.
 * With a file that does not exist, it creates one with an object per function
 * of the generated file.
 */
export async function implement(options: ImplementOptions): Promise<ImplementResult> {
  // ts-morph carries a TypeScript compiler: load it only for this command.
  const { Node, Project, SyntaxKind } = await import("ts-morph");
  const file = resolve(options.file);
  const project: Project = new Project({
    compilerOptions: { strict: true, module: 199 /* NodeNext */, moduleResolution: 99 /* NodeNext */, target: 9, skipLibCheck: true },
  });
  let created = false;
  let source: SourceFile;
  if (existsSync(file)) {
    source = project.addSourceFileAtPath(file);
  } else {
    if (options.generated === undefined) {
      throw new ImplementError(`${options.file} does not exist; pass --gen <the generated *_shoal.ts file> to create it`);
    }
    const generated = project.addSourceFileAtPath(resolve(options.generated));
    const interfaces = handlerInterfaces(generated, options.functionName);
    let specifier = relative(dirname(file), resolve(options.generated)).replace(/\.ts$/, ".js");
    if (!specifier.startsWith(".")) specifier = `./${specifier}`;
    const lines = [`import type { ${interfaces.map((i) => i.getName()).join(", ")} } from "${specifier}";`, ""];
    for (const i of interfaces) lines.push(`export const ${variableName(i.getName())}: ${i.getName()} = {};`, "");
    source = project.createSourceFile(file, lines.join("\n"));
    created = true;
  }
  project.resolveSourceFileDependencies();

  const added: string[] = [];
  for (const declaration of source.getVariableDeclarations()) {
    const typeName = declaration.getTypeNode()?.getText();
    if (typeName === undefined || !/Handlers$/.test(typeName)) continue;
    const initializer = declaration.getInitializerIfKind(SyntaxKind.ObjectLiteralExpression);
    if (initializer === undefined) continue;
    const declared = declaration.getType();
    if (declared.getProperties().length === 0) {
      throw new ImplementError(
        `${basename(file)}: cannot resolve ${typeName}; run \`npm run build\` (or buf generate) first so the generated code exists`,
      );
    }
    const present = new Set(initializer.getProperties().flatMap((p) => ("getName" in p ? [(p as { getName(): string }).getName()] : [])));
    for (const member of declared.getProperties()) {
      const name = member.getName();
      if (present.has(name)) continue;
      const docs = member
        .getDeclarations()
        .flatMap((d) => (Node.isJSDocable(d) ? d.getJsDocs().map((doc) => doc.getText()) : []))
        .join("\n");
      const rpc = /@generated from rpc (\S+)/.exec(docs)?.[1] ?? name;
      addStub(initializer, name, rpc);
      added.push(`${declaration.getName()}.${name}`);
    }
  }
  if (added.length > 0 && !hasImport(source, "ShoalError")) {
    const sdk = source.getImportDeclaration((d) => d.getModuleSpecifierValue() === "@shoal/sdk" && !d.isTypeOnly());
    if (sdk !== undefined) {
      const names = new Set(sdk.getNamedImports().map((n) => n.getName()));
      for (const n of ["Code", "ShoalError"]) if (!names.has(n)) sdk.addNamedImport(n);
    } else {
      source.insertImportDeclaration(0, { moduleSpecifier: "@shoal/sdk", namedImports: ["Code", "ShoalError"] });
    }
  } else if (added.length > 0 && !hasImport(source, "Code")) {
    source.insertImportDeclaration(0, { moduleSpecifier: "@shoal/sdk", namedImports: ["Code"] });
  }
  if (added.length > 0 || created) {
    source.formatText({ indentSize: 2, convertTabsToSpaces: true });
    await source.save();
  }
  return { created, added };
}

function handlerInterfaces(generated: SourceFile, functionName: string | undefined): InterfaceDeclaration[] {
  const all = generated.getInterfaces().filter((i) => i.isExported() && /Handlers$/.test(i.getName()));
  const chosen = functionName === undefined ? all : all.filter((i) => i.getName() === `${functionName}Handlers`);
  if (chosen.length === 0) {
    const known = all.map((i) => i.getName().replace(/Handlers$/, "")).join(", ") || "none";
    throw new ImplementError(
      `${basename(generated.getFilePath())} has no handler interface${functionName ? ` for ${functionName}` : ""} (functions: ${known})`,
    );
  }
  return chosen;
}

function variableName(interfaceName: string): string {
  const base = interfaceName.replace(/Handlers$/, "");
  return base.charAt(0).toLowerCase() + base.slice(1);
}

function hasImport(source: SourceFile, name: string): boolean {
  return source
    .getImportDeclarations()
    .some((d) => d.getNamedImports().some((n) => n.getName() === name && !n.isTypeOnly()) && !d.isTypeOnly());
}

function addStub(target: ObjectLiteralExpression, name: string, rpc: string) {
  target.addMethod({
    name,
    parameters: [{ name: "_request" }, { name: "_ctx" }],
    statements: [`throw new ShoalError(Code.Unimplemented, "${rpc} is not implemented yet");`],
  });
}
