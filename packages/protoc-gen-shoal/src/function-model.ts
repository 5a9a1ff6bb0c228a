import {
  type DescField,
  type DescFile,
  type DescMessage,
  type DescMethod,
  type DescService,
  getOption,
  hasOption,
  type Registry,
  ScalarType,
} from "@bufbuild/protobuf";
import { function$ as functionOption, handler as handlerOption, key as keyOption } from "@shoal/sdk/internal";

/** A handler of a function type, as read from its rpc and options. */
export interface HandlerModel {
  readonly method: DescMethod;
  /** `(shoal.v1.handler).shared`. */
  readonly shared: boolean;
}

/** A function type, as read from a service annotated with `(shoal.v1.function)`. */
export interface FunctionModel {
  readonly service: DescService;
  /** The state message; `undefined` for a stateless function. */
  readonly state: DescMessage | undefined;
  readonly handlers: readonly HandlerModel[];
}

/** What one proto file declares: its function types, or what is wrong with them. */
export interface FileModel {
  readonly file: DescFile;
  readonly functions: readonly FunctionModel[];
  /** One line per problem, each naming the file, service, rpc and field concerned. */
  readonly errors: readonly string[];
}

const integerScalars: ReadonlySet<ScalarType> = new Set([
  ScalarType.INT32,
  ScalarType.INT64,
  ScalarType.UINT32,
  ScalarType.UINT64,
  ScalarType.SINT32,
  ScalarType.SINT64,
  ScalarType.FIXED32,
  ScalarType.FIXED64,
  ScalarType.SFIXED32,
  ScalarType.SFIXED64,
]);

const keyTypes = "string, int32, int64, uint32, uint64, sint32, sint64, fixed32, fixed64, sfixed32 or sfixed64";

/**
 * Reads the function types of a file and checks them against the rules of
 * DESIGN §3. Services without `(shoal.v1.function)` are ignored.
 *
 * @param registry every file of the request, to find state messages declared in imports
 */
export function readFileModel(file: DescFile, registry: Registry): FileModel {
  const functions: FunctionModel[] = [];
  const errors: string[] = [];
  for (const service of file.services) {
    if (!hasOption(service, functionOption)) continue;
    const model = readFunction(file, service, registry, errors);
    if (model !== undefined) functions.push(model);
  }
  errors.push(...nameClashes(file, functions));
  return { file, functions, errors };
}

function readFunction(file: DescFile, service: DescService, registry: Registry, errors: string[]): FunctionModel | undefined {
  const where = `${file.proto.name}: service ${service.typeName}`;
  const errorCount = errors.length;
  const options = getOption(service, functionOption);
  const stateful = options.state !== "";

  let state: DescMessage | undefined;
  if (stateful) {
    state = registry.getMessage(options.state);
    if (state === undefined) {
      const hint = options.state.startsWith(".")
        ? "; write the full name without a leading dot"
        : "; declare it in this file or in a file it imports, by its full name (package.Message)";
      errors.push(`${where}: (shoal.v1.function).state names no message: "${options.state}" was not found${hint}`);
    }
  } else if (options.stateTtl !== undefined) {
    errors.push(
      `${where}: (shoal.v1.function).state_ttl is set but the function has no state; set (shoal.v1.function).state or remove state_ttl`,
    );
  }
  if (options.stateTtl !== undefined && stateful) {
    const { seconds, nanos } = options.stateTtl;
    if (seconds < 0n || nanos < 0 || (seconds === 0n && nanos === 0)) {
      errors.push(`${where}: (shoal.v1.function).state_ttl must be positive, is ${seconds}s ${nanos}ns`);
    }
  }

  const handlers: HandlerModel[] = [];
  for (const method of service.methods) {
    const at = `${where}, rpc ${method.name}`;
    if (method.methodKind !== "unary") {
      const kind = method.methodKind.replace("_", " ");
      errors.push(`${at}: the rpc is ${kind}; streaming rpcs are not supported by Shoal; use unary rpcs`);
    }
    if (method.localName === "send") {
      errors.push(
        `${at}: its TypeScript name "send" is taken by the one-way sends of the generated client (client.send.<rpc>); rename the rpc`,
      );
    }
    const shared = hasOption(method, handlerOption) && getOption(method, handlerOption).shared;
    if (shared && !stateful) {
      errors.push(
        `${at}: (shoal.v1.handler).shared is set but the function has no state; shared handlers only read state: remove shared or set (shoal.v1.function).state`,
      );
    }
    errors.push(...checkKey(at, method.input, stateful));
    handlers.push({ method, shared });
  }
  if (errors.length > errorCount) return undefined;
  return { service, state, handlers };
}

function checkKey(at: string, request: DescMessage, stateful: boolean): string[] {
  const errors: string[] = [];
  const keyFields = request.fields.filter((field) => hasOption(field, keyOption) && getOption(field, keyOption));
  if (stateful && keyFields.length === 0) {
    errors.push(`${at}: request ${request.typeName} has no field marked (shoal.v1.key); a function with state needs exactly one`);
  }
  if (stateful && keyFields.length > 1) {
    const names = keyFields.map((field) => field.name).join(", ");
    errors.push(
      `${at}: request ${request.typeName} has ${keyFields.length} fields marked (shoal.v1.key) (${names}); a function with state needs exactly one`,
    );
  }
  for (const field of keyFields) {
    const fieldName = `${request.typeName}.${field.name}`;
    if (!isKeyType(field)) {
      errors.push(`${at}: key field ${fieldName} is ${describeType(field)}; a key must be a ${keyTypes} field`);
    } else if (field.oneof !== undefined) {
      errors.push(`${at}: key field ${fieldName} is in oneof ${field.oneof.name}; a key field must not be in a oneof`);
    }
  }
  return errors;
}

function isKeyType(field: DescField): boolean {
  return field.fieldKind === "scalar" && (field.scalar === ScalarType.STRING || integerScalars.has(field.scalar));
}

function describeType(field: DescField): string {
  switch (field.fieldKind) {
    case "scalar":
      return `a ${scalarName(field.scalar)} field`;
    case "enum":
      return `an enum field (${field.enum.typeName})`;
    case "message":
      return `a message field (${field.message.typeName})`;
    case "list":
      return "a repeated field";
    case "map":
      return "a map field";
  }
}

function scalarName(scalar: ScalarType): string {
  return ScalarType[scalar].toLowerCase();
}

/** The names a function exports from the generated file. */
export function exportedNames(fn: FunctionModel): {
  context: string;
  sharedContext: string;
  handlers: string;
  function: string;
  client: string;
  createClient: string;
} {
  const name = fn.service.name;
  return {
    context: `${name}Context`,
    sharedContext: `${name}SharedContext`,
    handlers: `${name}Handlers`,
    function: `${name}Function`,
    client: `${name}Client`,
    createClient: `create${name}Client`,
  };
}

/** Whether the generated file exports the shared context of a function. */
export function hasSharedContext(fn: FunctionModel): boolean {
  return fn.state !== undefined && fn.handlers.some((handler) => handler.shared);
}

function nameClashes(file: DescFile, functions: readonly FunctionModel[]): string[] {
  const owners = new Map<string, string>();
  const errors: string[] = [];
  for (const fn of functions) {
    const names = exportedNames(fn);
    const used = [names.context, names.handlers, names.function, names.client, names.createClient];
    if (hasSharedContext(fn)) used.push(names.sharedContext);
    for (const name of used) {
      const owner = owners.get(name);
      if (owner !== undefined) {
        errors.push(
          `${file.proto.name}: service ${fn.service.typeName}: the generated name ${name} is also generated for service ${owner}; rename one of the services`,
        );
      }
      owners.set(name, fn.service.typeName);
    }
  }
  return errors;
}
