import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { type GeneratedFile, getComments, type Printable } from "@bufbuild/protoplugin";
import { exportedNames, type FunctionModel, hasSharedContext } from "./function-model.js";

const sdk = "@shoal/sdk";

/**
 * Prints the declarations of one function type: its context aliases, handler
 * interface, function type value, client interface and client factory.
 */
export function printFunction(f: GeneratedFile, fn: FunctionModel): void {
  const { service, state } = fn;
  const names = exportedNames(fn);
  const type = (name: string) => f.import(name, sdk).toTypeOnly();
  const initShape = (method: DescMethod, io: "input" | "output"): Printable => [
    type("MessageInitShape"),
    "<typeof ",
    f.importSchema(method[io], true),
    ">",
  ];

  // Contexts
  if (state === undefined) {
    f.print(f.jsDoc(`The context of a handler of ${service.typeName}, a stateless function.`));
    f.print(f.export("type", names.context), " = ", type("StatelessContext"), ";");
  } else {
    const stateSchema = f.importSchema(state, true);
    f.print(f.jsDoc(`The context of an exclusive handler of ${service.typeName}: reads and writes state.`));
    f.print(f.export("type", names.context), " = ", type("Context"), "<typeof ", stateSchema, ">;");
    if (hasSharedContext(fn)) {
      f.print(f.jsDoc(`The context of a shared handler of ${service.typeName}: reads the last committed state.`));
      f.print(f.export("type", names.sharedContext), " = ", type("SharedContext"), "<typeof ", stateSchema, ">;");
    }
  }
  f.print();

  // Handlers. Members are function-typed properties rather than methods so that
  // their parameters are checked strictly (methods are bivariant): a shared
  // handler declared with the exclusive context does not compile.
  f.print(f.jsDoc(service));
  f.print(f.export("interface", names.handlers), " {");
  fn.handlers.forEach((handler, i) => {
    const { method } = handler;
    const ctx = handler.shared ? names.sharedContext : names.context;
    const reply = initShape(method, "output");
    if (i > 0) f.print();
    f.print(f.jsDoc(method, "  "));
    f.print(
      "  ",
      method.localName,
      ": (request: ",
      f.importShape(method.input),
      ", ctx: ",
      ctx,
      ") => Promise<",
      reply,
      "> | ",
      reply,
      ";",
    );
  });
  f.print("}");
  f.print();

  // Function type
  const stateType: Printable = state === undefined ? "undefined" : ["typeof ", f.importSchema(state, true)];
  const stateArg: Printable = state === undefined ? "" : [", ", f.importSchema(state)];
  f.print(f.jsDoc(`The function type ${service.typeName}: pass it to implement(), ctx.call(), ctx.send().`));
  f.print(
    f.export("const", names.function),
    ": ",
    type("FunctionType"),
    "<typeof ",
    f.importSchema(service, true),
    ", ",
    stateType,
    ", ",
    names.handlers,
    "> = ",
    f.import("defineFunction", sdk),
    "(",
    f.importSchema(service),
    stateArg,
    ");",
  );
  f.print();

  // Client
  f.print(f.jsDoc(`A typed client of ${service.typeName} for callers outside the runtime.`));
  f.print(f.export("interface", names.client), " {");
  for (const { method } of fn.handlers) {
    f.print(f.jsDoc(clientDoc(service, method), "  "));
    f.print(
      "  ",
      method.localName,
      "(request: ",
      initShape(method, "input"),
      ", options?: ",
      type("ClientCallOptions"),
      "): Promise<",
      f.importShape(method.output),
      ">;",
    );
    f.print();
  }
  f.print(f.jsDoc("One-way sends: each resolves once the runtime has durably accepted the message.", "  "));
  f.print("  readonly send: {");
  for (const { method } of fn.handlers) {
    f.print(
      "    ",
      method.localName,
      "(request: ",
      initShape(method, "input"),
      ", options?: ",
      type("ClientSendOptions"),
      "): Promise<",
      type("SendReceipt"),
      ">;",
    );
  }
  f.print("  };");
  f.print("}");
  f.print();
  f.print(f.jsDoc(`Creates a typed client of ${service.typeName} over a Connect transport.`));
  f.print(f.export("function", names.createClient), "(transport: ", type("Transport"), "): ", names.client, " {");
  f.print("  return ", f.import("createFunctionClient", sdk), "(", names.function, ", transport);");
  f.print("}");
}

function clientDoc(service: DescService, method: DescMethod): string {
  const comment = leadingComment(method);
  const fallback = `Calls ${service.typeName}.${method.name} and awaits its reply.`;
  const text = comment === "" ? fallback : comment;
  return method.deprecated ? `${text}\n\n@deprecated` : text;
}

/** The leading comment of an element in the proto source, as TSDoc text. */
function leadingComment(method: DescMethod): string {
  const leading = getComments(method).leading ?? "";
  return leading
    .replace(/\n$/, "")
    .split("\n")
    .map((line) => (line.startsWith(" ") ? line.substring(1) : line))
    .join("\n")
    .trim();
}
