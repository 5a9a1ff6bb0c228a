import { createRegistry } from "@bufbuild/protobuf";
import { createEcmaScriptPlugin, type Schema } from "@bufbuild/protoplugin";
import { type FileModel, readFileModel } from "./function-model.js";
import { printFunction } from "./generate-ts.js";

/**
 * The protoc plugin that generates `<name>_shoal.ts` beside protoc-gen-es's
 * `<name>_pb.ts` for every proto file with a service annotated with
 * `(shoal.v1.function)`: handler interfaces, context types, the function type
 * value and a typed client per function.
 *
 * It validates the Shoal options first and fails with one line per problem,
 * naming the file, service, rpc and field concerned. The `js` and `dts`
 * targets are transpiled from the generated TypeScript by protoplugin.
 */
export const protocGenShoal = createEcmaScriptPlugin({
  name: "protoc-gen-shoal",
  version: "v0.1.0",
  generateTs,
});

function generateTs(schema: Schema): void {
  const registry = createRegistry(...schema.allFiles);
  const models: FileModel[] = schema.files.map((file) => readFileModel(file, registry));
  const errors = models.flatMap((model) => model.errors);
  if (errors.length > 0) {
    throw new Error(errors.length === 1 ? errors.join("") : `${errors.length} problems:\n${errors.join("\n")}`);
  }
  for (const { file, functions } of models) {
    if (functions.length === 0) continue;
    const f = schema.generateFile(`${file.name}_shoal.ts`);
    f.preamble(file);
    functions.forEach((fn, i) => {
      if (i > 0) f.print();
      printFunction(f, fn);
    });
  }
}
