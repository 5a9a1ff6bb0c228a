export type { MessageInitShape, MessageShape } from "@bufbuild/protobuf";
export type { Transport } from "@connectrpc/connect";
export { Code } from "@connectrpc/connect";
export type { ClientCallOptions, ClientSendOptions, FunctionClient, SendReceipt } from "./client.js";
export { createFunctionClient } from "./client.js";
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
export type { Address, AnyFunctionType, FunctionType, HandlerInfo, HandlersOf } from "./function-type.js";
// for runtime and plugin authors
export { defineFunction, FunctionDefinitionError, formatAddress, keyOf } from "./function-type.js";
export { headers } from "./headers.js";
export type { Implementation, ShoalModule } from "./module.js";
export { implement, isModule, module } from "./module.js";
export { ShoalError } from "./shoal-error.js";
