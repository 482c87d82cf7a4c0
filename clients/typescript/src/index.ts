/**
 * A typed client for jobs.v1.JobService, speaking native gRPC over HTTP/2.
 *
 * Everything under ./gen is generated from ../../protos at build time
 * (`npm run generate`); this module only adds a one-line way to connect.
 */
import { type Client, type Interceptor, createClient } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { JobService } from "./gen/jobs/v1/jobs_service_pb.js";

export * from "./gen/jobs/v1/jobs_service_pb.js";
export {
  type BadRequest,
  BadRequestSchema,
  type ErrorInfo,
  ErrorInfoSchema,
  type RetryInfo,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** The generated JobService client: one async method per RPC, WatchJob as an async iterable. */
export type JobServiceClient = Client<typeof JobService>;

/** A JobService client and the HTTP/2 connection behind it. */
export interface JobServiceConnection {
  readonly client: JobServiceClient;
  /** Closes the HTTP/2 connection; calls still running fail. */
  close(): void;
}

/** How to reach JobService. */
export interface ConnectOptions {
  /**
   * CA certificates (PEM) that the server's certificate must chain to, for
   * a gateway whose certificate is not signed by a CA Node already trusts.
   * Giving one makes a "host:port" target use TLS (https).
   */
  readonly ca?: string | Buffer;
  /**
   * The API key (or identity-provider token) every call presents as
   * `authorization: Bearer <apiKey>`; `make run` prints one as JOBS_API_KEY.
   * Without it, calls are refused with UNAUTHENTICATED unless the service
   * runs with AUTH_MODE=none.
   */
  readonly apiKey?: string;
}

/** An interceptor that adds `authorization: Bearer <token>` to every call. */
export function bearerToken(token: string): Interceptor {
  return (next) => (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
}

/**
 * Connects to JobService at `target`: "host:port" (plaintext HTTP/2, as Envoy
 * and the server listen locally; TLS when `options.ca` is given) or a full
 * "http://" / "https://" URL.
 */
export function connectJobService(
  target: string,
  options: ConnectOptions = {},
): JobServiceConnection {
  const scheme = options.ca === undefined ? "http" : "https";
  const baseUrl = /^https?:\/\//.test(target) ? target : `${scheme}://${target}`;
  // The gRPC transport always speaks HTTP/2 (cleartext for http://, TLS with
  // ALPN h2 for https://). Our own session manager lets close() end the
  // connection at once instead of waiting for the idle timeout.
  const sessionManager = new Http2SessionManager(
    baseUrl,
    undefined,
    options.ca === undefined ? undefined : { ca: options.ca },
  );
  const interceptors = options.apiKey ? [bearerToken(options.apiKey)] : [];
  const transport = createGrpcTransport({ baseUrl, sessionManager, interceptors });
  return {
    client: createClient(JobService, transport),
    close: () => sessionManager.abort(),
  };
}
