// The invoker types live in the SDK, shared with function endpoints
// (`serveFunctions`) that answer the same requests over the network.
export type {
  AwaitedCall,
  Effects,
  EgressEffect,
  InvokeMessage,
  InvokeRequest,
  InvokeResponse,
  Invoker,
  MessageOutcome,
  SendEffect,
  StateEffect,
} from "@shoal/sdk/internal";
