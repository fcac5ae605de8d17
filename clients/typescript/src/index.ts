/**
 * TypeScript / Node client of the clerk-sync user directory.
 *
 * The messages and service descriptors are generated from the repository's
 * proto/ by `npm run generate` (buf with the local protoc-gen-es plugin) into
 * src/gen/, never committed; this module only adds what every caller needs
 * around them: one HTTP/2 connection to the sync-service speaking the gRPC
 * protocol, with the deployment's TLS and bearer-token settings, and typed
 * clients on it.
 *
 *     import { connect } from "@clerk-sync/client";
 *
 *     const directory = connect("127.0.0.1:50051", { token: process.env.CLERK_SYNC_TOKEN });
 *     const { user } = await directory.users.getUser({ id: "user_123" });
 *     directory.close();
 */

import { readFileSync } from "node:fs";
import type * as http2 from "node:http2";
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { UserDirectoryService } from "./gen/clerk/sync/v1/directory_pb.js";
import { OrganizationDirectoryService } from "./gen/clerk/sync/v1/organization_pb.js";
import { UserSyncService } from "./gen/clerk/sync/v1/sync_pb.js";

// The generated messages, enums and services (`User`, `UserSchema`,
// `WatchUsersResponse`, `Outcome`, …): one proto package, so no name clashes.
export * from "./gen/clerk/sync/v1/user_pb.js";
export * from "./gen/clerk/sync/v1/directory_pb.js";
export * from "./gen/clerk/sync/v1/organization_pb.js";
export * from "./gen/clerk/sync/v1/sync_pb.js";
// What a caller matches errors against: `err instanceof ConnectError`,
// `err.code === Code.NotFound`.
export { Code, ConnectError } from "@connectrpc/connect";

/** How to reach the sync-service. */
export interface ConnectOptions {
  /**
   * Bearer token sent as `authorization: Bearer …` on every call (a read
   * token is enough for the directory services). Prefer an environment
   * variable over a command-line argument to carry it.
   */
  token?: string;
  /**
   * PEM file of the CA that signed the server's certificate; when given, the
   * connection uses TLS, otherwise plaintext (local development).
   */
  caFile?: string;
  /**
   * Default deadline of every call, in milliseconds; none by default. A
   * call's own `{ timeoutMs }` overrides it, and `{ timeoutMs: 0 }` means
   * none: what a WatchUsers stream, which runs for as long as it is read,
   * needs when a default is set.
   */
  timeoutMs?: number;
}

/** Typed clients of the sync-service's services, sharing one connection. */
export interface SyncServiceConnection {
  /** Users: get, find by email, list, and the change feed (WatchUsers, ListChanges). */
  readonly users: Client<typeof UserDirectoryService>;
  /** Organizations, memberships, roles and permissions. */
  readonly organizations: Client<typeof OrganizationDirectoryService>;
  /** Applies user events (needs a write token): the gateway's and a backfill's side. */
  readonly userSync: Client<typeof UserSyncService>;
  /** The gRPC transport, to create clients of the other services with `createClient`. */
  readonly transport: Transport;
  /** Closes the connection; calls still running fail. */
  close(): void;
}

/**
 * Connects to the sync-service at `address` (`host:port`) over HTTP/2 with
 * the gRPC protocol. The connection opens lazily on the first call and is
 * re-established when it drops; an idle one does not keep Node running.
 */
export function connect(address: string, options: ConnectOptions = {}): SyncServiceConnection {
  if (address.includes("://")) {
    throw new TypeError(`address must be host:port, not a URL: ${address}`);
  }
  const tls = options.caFile !== undefined;
  const baseUrl = `${tls ? "https" : "http"}://${address}`;
  const sessionManager = new GoawaySafeSessionManager(
    baseUrl,
    {},
    tls ? { ca: readFileSync(options.caFile as string) } : {},
  );
  const transport = createGrpcTransport({
    baseUrl,
    sessionManager,
    interceptors: options.token ? [bearerToken(options.token)] : [],
    defaultTimeoutMs: options.timeoutMs,
  });
  return {
    users: createClient(UserDirectoryService, transport),
    organizations: createClient(OrganizationDirectoryService, transport),
    userSync: createClient(UserSyncService, transport),
    transport,
    close: () => sessionManager.abort(),
  };
}

/**
 * An interceptor adding `authorization: Bearer <token>` to every call.
 *
 * Metadata rather than TLS-only call credentials: a token must also work
 * against a plaintext sync-service on a developer's loopback.
 */
export function bearerToken(token: string): Interceptor {
  const header = `Bearer ${token}`;
  return (next) => (request) => {
    request.header.set("authorization", header);
    return next(request);
  };
}

/**
 * Connect-ES's HTTP/2 session manager, with every connection it opens kept
 * from crashing the process when it is torn down.
 *
 * A GOAWAY on an idle connection (a sync-service shutting down or restarting,
 * a load balancer closing idle connections) makes the manager destroy it
 * with an error that Node raises only once the socket has closed; if the
 * manager has moved on by then (a new call reconnecting, or close()), nobody
 * listens for that error and it becomes an uncaught exception
 * (connectrpc/connect-es#1768, open for the versions supporting Node 20). A
 * no-op listener for the connection's lifetime absorbs it: the manager's own
 * listeners still see every error while they are attached.
 */
class GoawaySafeSessionManager extends Http2SessionManager {
  private readonly guarded = new WeakSet<http2.Http2Session>();

  override async request(
    ...args: Parameters<Http2SessionManager["request"]>
  ): Promise<http2.ClientHttp2Stream> {
    const stream = await super.request(...args);
    const session = stream.session;
    if (session && !this.guarded.has(session)) {
      this.guarded.add(session);
      session.on("error", () => {});
    }
    return stream;
  }
}
