import type { NatsConnection } from "@nats-io/transport-node";
import type { ConnectionHealth } from "../../observe/health.js";

/**
 * Follows a NATS connection's status events so `/healthz` and the metrics can
 * read its state synchronously: connected, reconnecting (lost; the client
 * tries the servers again on its own) or closed, the server it is on and how
 * many times it reconnected.
 */
export function watchConnection(nc: NatsConnection, servers: readonly string[]): () => ConnectionHealth {
  let state: ConnectionHealth["state"] = nc.isClosed() ? "closed" : "connected";
  let server = nc.getServer();
  let reconnects = 0;
  void (async () => {
    for await (const status of nc.status()) {
      switch (status.type) {
        case "disconnect":
          state = "reconnecting";
          server = status.server;
          break;
        case "reconnecting":
          state = "reconnecting";
          break;
        case "reconnect":
          state = "connected";
          server = status.server;
          reconnects++;
          break;
        case "close":
          state = "closed";
          break;
      }
    }
  })().catch(() => undefined);
  // The iterator ends with the connection; `closed` then holds whatever the last event was.
  void nc.closed().then(() => {
    state = "closed";
  });
  return () => ({ state: nc.isClosed() ? "closed" : state, server, reconnects, servers });
}
