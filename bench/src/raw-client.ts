import { connect, type Socket } from "node:net";

/** A response as the raw client saw it. */
export interface RawResponse {
  readonly status: number;
  readonly body: Buffer;
}

const headerEnd = Buffer.from("\r\n\r\n");

/**
 * One keep-alive HTTP/1.1 connection that sends pre-encoded requests and
 * reads responses framed by Content-Length, one request in flight at a time.
 * It speaks exactly the bytes a Connect client sends for a unary call, at a
 * fraction of the client's CPU cost, so that on a small machine the load
 * generator is not what limits the server under test.
 */
export class RawConnection {
  private buffer: Buffer = Buffer.alloc(0);
  private waiter: { resolve: (r: RawResponse) => void; reject: (e: Error) => void } | undefined;
  private socket: Socket | undefined;
  private closedByUs = false;

  private constructor(
    private readonly host: string,
    private readonly port: number,
  ) {}

  static async open(host: string, port: number): Promise<RawConnection> {
    const connection = new RawConnection(host, port);
    await connection.connect();
    return connection;
  }

  private connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: this.host, port: this.port }, () => {
        socket.off("error", reject);
        resolve();
      });
      socket.once("error", reject);
      socket.setNoDelay(true);
      socket.on("data", (chunk: Buffer) => {
        this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
        this.parse();
      });
      const fail = (err: Error) => {
        if (this.socket === socket) this.socket = undefined;
        this.buffer = Buffer.alloc(0);
        const w = this.waiter;
        this.waiter = undefined;
        w?.reject(err);
      };
      socket.on("error", fail);
      socket.on("close", () => fail(new Error("connection closed")));
      this.socket = socket;
    });
  }

  /**
   * Sends one complete request (head and body) and resolves with the response.
   * A connection the server closed while idle (keep-alive timeout) is opened again.
   */
  async send(request: Buffer): Promise<RawResponse> {
    if (this.closedByUs) throw new Error("connection closed");
    if (this.socket === undefined) await this.connect();
    const socket = this.socket as Socket;
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      socket.write(request);
    });
  }

  close(): void {
    this.closedByUs = true;
    this.socket?.destroy();
  }

  private parse() {
    const end = this.buffer.indexOf(headerEnd);
    if (end < 0) return;
    const head = this.buffer.toString("latin1", 0, end);
    const status = Number(head.slice(9, 12));
    const match = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    if (match?.[1] === undefined) {
      // Not framed by Content-Length (chunked): not what a unary Connect reply looks like.
      this.socket?.destroy(new Error(`response without content-length (status ${status})`));
      return;
    }
    const length = Number(match[1]);
    const total = end + headerEnd.length + length;
    if (this.buffer.length < total) return;
    const body = this.buffer.subarray(end + headerEnd.length, total);
    this.buffer = this.buffer.subarray(total);
    const w = this.waiter;
    this.waiter = undefined;
    w?.resolve({ status, body });
  }
}

/** The bytes of a Connect unary call with a binary protobuf body over HTTP/1.1. */
export function connectUnaryRequest(host: string, path: string, body: Uint8Array): Buffer {
  const head =
    `POST ${path} HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/proto\r\nConnect-Protocol-Version: 1\r\n` +
    `Accept-Encoding: identity\r\nContent-Length: ${body.length}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, "latin1"), body]);
}
