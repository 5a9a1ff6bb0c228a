// `npm run serve-functions`: these functions as a remote function endpoint
// (--port or PORT, default 9080; see runFunctionEndpoint for TLS and a bearer
// token), for a runtime whose shoal.yaml lists it.
import { runFunctionEndpoint } from "@shoal/sdk/serve";
import functions from "./module.js";

await runFunctionEndpoint(functions);
