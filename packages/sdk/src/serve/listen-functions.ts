import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import type { ShoalModule } from "../module.js";
import type { ServeFunctionsOptions } from "../remote/function-endpoint.js";
import { serveFunctions } from "./serve-functions.js";

/** Options of {@link listenFunctions}. */
export interface ListenFunctionsOptions extends ServeFunctionsOptions {
  /** The port; 0 picks a free one (the result's `port` says which). Default 9080. */
  readonly port?: number;
  /** The interface to listen on. Default: all. */
  readonly host?: string;
  /**
   * Serve HTTP/2 over TLS (and HTTP/1.1 for clients that ask for it) with
   * this PEM key and certificate. With `ca`, clients must present a
   * certificate it signed (mTLS). Default: plaintext.
   */
  readonly tls?: { readonly cert: string | Buffer; readonly key: string | Buffer; readonly ca?: string | Buffer };
  /** Plaintext only: `"2"` for HTTP/2 without TLS (h2c, what the runtime speaks) or `"1.1"`. Default `"2"`. */
  readonly httpVersion?: "2" | "1.1";
}

/** A listening function endpoint. */
export interface FunctionServer {
  /** The port it listens on (the one picked when `port` was 0). */
  readonly port: number;
  /** The base URL to give the runtime, e.g. `http://127.0.0.1:9080`. */
  readonly url: string;
  /** Stops accepting connections, lets requests in progress finish, then resolves. */
  close(): Promise<void>;
}

/**
 * Starts a node server for {@link serveFunctions}: the entry point of a
 * function endpoint process.
 *
 * @example
 * import { listenFunctions, listenOptionsFromEnv } from "@shoal/sdk/serve";
 * import functions from "./module.js";
 * await listenFunctions(functions, listenOptionsFromEnv());
 */
export async function listenFunctions(module: ShoalModule, options: ListenFunctionsOptions = {}): Promise<FunctionServer> {
  const handler = serveFunctions(module, options).node;
  const tls = options.tls;
  const server =
    tls !== undefined
      ? http2.createSecureServer(
          {
            cert: tls.cert,
            key: tls.key,
            ca: tls.ca,
            requestCert: tls.ca !== undefined,
            rejectUnauthorized: tls.ca !== undefined,
            allowHTTP1: true,
          },
          handler,
        )
      : options.httpVersion === "1.1"
        ? http.createServer(handler)
        : http2.createServer(handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session: http2.ServerHttp2Session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 9080, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = options.host === undefined || options.host === "0.0.0.0" || options.host === "::" ? "127.0.0.1" : options.host;
  return {
    port,
    url: `${tls !== undefined ? "https" : "http"}://${host.includes(":") ? `[${host}]` : host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const session of sessions) session.close();
        if (server instanceof http.Server) server.closeIdleConnections();
      }),
  };
}

/**
 * Options for {@link listenFunctions} from the command line and the
 * environment, for an endpoint's entry point: `--port` or `PORT`, `--host`
 * or `HOST`, `SHOAL_BEARER_TOKEN`, and the PEM files `SHOAL_TLS_CERT`,
 * `SHOAL_TLS_KEY` and (for mTLS) `SHOAL_TLS_CA`.
 */
export function listenOptionsFromEnv(argv: readonly string[] = process.argv.slice(2), env = process.env): ListenFunctionsOptions {
  const flag = (name: string) => {
    const at = argv.indexOf(name);
    return at === -1 ? undefined : argv[at + 1];
  };
  const portText = flag("--port") ?? env.PORT;
  const port = portText === undefined ? undefined : Number(portText);
  if (port !== undefined && !(Number.isInteger(port) && port >= 0 && port <= 65535)) {
    throw new Error(`port ${JSON.stringify(portText)} (--port or PORT) is not a port number: give 0 to 65535`);
  }
  const cert = env.SHOAL_TLS_CERT;
  const key = env.SHOAL_TLS_KEY;
  if ((cert === undefined) !== (key === undefined)) {
    throw new Error("SHOAL_TLS_CERT and SHOAL_TLS_KEY go together: set both (PEM files) to serve TLS, or neither for plaintext");
  }
  const ca = env.SHOAL_TLS_CA;
  return {
    port,
    host: flag("--host") ?? env.HOST,
    bearerToken: env.SHOAL_BEARER_TOKEN || undefined,
    tls:
      cert !== undefined && key !== undefined
        ? { cert: readFileSync(cert), key: readFileSync(key), ca: ca !== undefined ? readFileSync(ca) : undefined }
        : undefined,
  };
}

/**
 * The whole entry point of a function endpoint process: listens with
 * {@link listenOptionsFromEnv}, prints `serving shoal.v1.FunctionService for
 * <types> at <url>` on stdout, and closes gracefully on SIGTERM or SIGINT.
 * A failure to start (a bad port, the port in use) is printed on stderr with
 * exit code 1.
 *
 * @example
 * // src/serve-functions.ts
 * import { runFunctionEndpoint } from "@shoal/sdk/serve";
 * import functions from "./module.js";
 * await runFunctionEndpoint(functions);
 */
export async function runFunctionEndpoint(module: ShoalModule, options?: ListenFunctionsOptions): Promise<FunctionServer | undefined> {
  let server: FunctionServer;
  try {
    server = await listenFunctions(module, options ?? listenOptionsFromEnv());
  } catch (err) {
    process.stderr.write(`serve-functions: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
    return undefined;
  }
  const types = module.implementations.map((i) => i.fn.typeName).join(", ");
  process.stdout.write(`serving shoal.v1.FunctionService for ${types} at ${server.url}\n`);
  const stop = () => void server.close().then(() => process.exit(0));
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
  return server;
}
