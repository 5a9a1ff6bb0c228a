/** The state of a storage backend's connection to its servers (the `nats` backend's NATS connection). */
export interface ConnectionHealth {
  /**
   * `connected`; `reconnecting` while the connection is lost and the client
   * tries the servers again (it does so forever); `closed` once the storage
   * closed it (the node is stopping).
   */
  readonly state: "connected" | "reconnecting" | "closed";
  /** The server the connection is on (`host:port`), or the last one it was on when not connected. */
  readonly server: string;
  /** Times the connection was lost and made again since the storage opened. */
  readonly reconnects: number;
  /** The servers the connection tries (`storage.servers`), for a reason that names them. */
  readonly servers: readonly string[];
}

/** What `/healthz` decides from. */
export interface HealthInputs {
  /** Shards this node owns. */
  readonly owned: number;
  /** Of those, the ones that are not open or whose storage failed (recovering). */
  readonly unavailable: number;
  /** The storage's connection, when its backend has one. */
  readonly connection?: ConnectionHealth;
}

/** Whether a node is ready to serve, and if not, why (each reason says what is wrong and what happens next). */
export interface Health {
  readonly ready: boolean;
  readonly reasons: readonly string[];
}

/**
 * The one health decision of a node (`GET /healthz`): not ready while a shard
 * it owns is unavailable or while its storage's connection is not connected.
 * While NATS is unreachable, every write fails with Unavailable, so a load
 * balancer should send requests elsewhere until the client reconnected.
 */
export function assessHealth(inputs: HealthInputs): Health {
  const reasons: string[] = [];
  const { connection } = inputs;
  if (connection !== undefined && connection.state !== "connected") {
    reasons.push(
      connection.state === "closed"
        ? "NATS connection closed (the node is stopping)"
        : `NATS connection lost (last server ${connection.server}); reconnecting to ${connection.servers.join(", ")}`,
    );
  }
  if (inputs.unavailable > 0) reasons.push(`${inputs.unavailable} of the ${inputs.owned} shards this node owns unavailable`);
  return { ready: reasons.length === 0, reasons };
}
