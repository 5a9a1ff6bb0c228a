// Implementing functions
export { ShoalError } from "./shoal-error.js";
export { Code } from "@connectrpc/connect";
export type {
  BaseContext,
  CancellationToken,
  Context,
  FunctionCaller,
  FunctionSender,
  Logger,
  SendOptions,
  SharedContext,
  StatelessContext,
} from "./context.js";
export type { DeepReadonly } from "./deep-readonly.js";
export { implement, module, isModule } from "./module.js";
export type { Implementation, ShoalModule } from "./module.js";

// Calling functions from outside the runtime
export { createFunctionClient } from "./client.js";
export type { ClientCallOptions, ClientSendOptions, FunctionClient, SendReceipt } from "./client.js";
export { headers } from "./headers.js";
export type { Transport } from "@connectrpc/connect";
export type { MessageInitShape, MessageShape } from "@bufbuild/protobuf";

// for runtime and plugin authors
export { defineFunction, keyOf, formatAddress, handlerByLocalName, FunctionDefinitionError } from "./function-type.js";
export type { Address, AnyFunctionType, FunctionType, HandlerInfo, HandlersOf } from "./function-type.js";
