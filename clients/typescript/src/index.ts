/**
 * A typed client for jobs.v1.JobService, speaking native gRPC over HTTP/2.
 *
 * Everything under ./gen is generated from ../../protos at build time
 * (`npm run generate`); this module only adds a one-line way to connect.
 */
import { type Client, createClient } from "@connectrpc/connect";
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

/**
 * Connects to JobService at `target`: "host:port" (plaintext HTTP/2, as Envoy
 * and the server listen locally) or a full "http://" / "https://" URL.
 */
export function connectJobService(target: string): JobServiceConnection {
  const baseUrl = /^https?:\/\//.test(target) ? target : `http://${target}`;
  // The gRPC transport always speaks HTTP/2 (cleartext for http://). Our own
  // session manager lets close() end the connection at once instead of
  // waiting for the idle timeout.
  const sessionManager = new Http2SessionManager(baseUrl);
  const transport = createGrpcTransport({ baseUrl, sessionManager });
  return {
    client: createClient(JobService, transport),
    close: () => sessionManager.abort(),
  };
}
