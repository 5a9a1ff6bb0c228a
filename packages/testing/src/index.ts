export type {
  CannedCalls,
  CannedRepliesOf,
  CannedReply,
  HandlerName,
  HandlerReply,
  HandlerRequest,
  HandlerRequestInit,
  RecordedCall,
  RecordedEgress,
  RecordedLog,
  RecordedSend,
  RunHandlerOptions,
  RunHandlerResult,
  StateInitOf,
  StateOf,
  UntypedRequest,
} from "./run-handler.js";
export { cannedReplies, runHandler } from "./run-handler.js";
export type { EgressedMessage, TestEnv, TestEnvOptions } from "./test-env.js";
export { createTestEnv } from "./test-env.js";
