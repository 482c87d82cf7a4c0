/**
 * The one JobService client of the page, and what it needs around it: the API key it presents,
 * and what a failed call means to the person looking at the page.
 *
 * Calls go to the gateway that served the page (same origin, so no CORS) over gRPC-Web.
 */
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { signal } from "@preact/signals";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb";
import { JobService } from "./gen/jobs/v1/jobs_service_pb";

/** Where the key lives: this tab only, gone when the tab closes (never localStorage). */
const KEY_STORAGE = "jobs.apiKey";

/**
 * Whether the page may call the service: "checking" until the first call answers, "needed"
 * while it shows the key prompt (with the reason in `keyPromptReason`), "ready" after that.
 */
export const access = signal<"checking" | "needed" | "ready">("checking");
export const keyPromptReason = signal("");

export function storedKey(): string {
  return sessionStorage.getItem(KEY_STORAGE) ?? "";
}

export function storeKey(key: string): void {
  sessionStorage.setItem(KEY_STORAGE, key);
}

/** Forget the key and show the prompt: the service refused it, or the person signed out. */
export function requireKey(reason: string): void {
  sessionStorage.removeItem(KEY_STORAGE);
  keyPromptReason.value = reason;
  access.value = "needed";
}

/** Every call presents the stored key, if there is one (a service with AUTH_MODE=none needs none). */
const bearer: Interceptor = (next) => (request) => {
  const key = storedKey();
  if (key) {
    request.header.set("authorization", `Bearer ${key}`);
  }
  return next(request);
};

const transport = createGrpcWebTransport({
  baseUrl: window.location.origin,
  useBinaryFormat: true,
  interceptors: [bearer],
});

export type JobsClient = Client<typeof JobService>;
export const jobs: JobsClient = createClient(JobService, transport);

/** True for the error of a call that this page itself stopped (a closed detail, a new filter). */
export function isAborted(error: unknown): boolean {
  return (
    (error instanceof DOMException && error.name === "AbortError") ||
    (error instanceof ConnectError && error.code === Code.Canceled)
  );
}

/**
 * Handles what every caller handles alike and says whether the caller should carry on:
 * an aborted call is silent, UNAUTHENTICATED returns to the key prompt.
 */
export function handleCallError(error: unknown): "aborted" | "unauthenticated" | "failed" {
  if (isAborted(error)) {
    return "aborted";
  }
  const connectError = ConnectError.from(error);
  if (connectError.code === Code.Unauthenticated) {
    requireKey(connectError.rawMessage || "The service asks for an API key.");
    return "unauthenticated";
  }
  return "failed";
}

/** A readable one-line description of a failed call. */
export function describeError(error: unknown): string {
  const connectError = ConnectError.from(error);
  const code = Code[connectError.code] ?? String(connectError.code);
  return `${code.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase()}: ${connectError.rawMessage}`;
}

/** The BadRequest field violations of an INVALID_ARGUMENT error: field name -> descriptions. */
export function fieldViolations(error: unknown): Map<string, string[]> {
  const violations = new Map<string, string[]>();
  for (const detail of ConnectError.from(error).findDetails(BadRequestSchema)) {
    for (const violation of detail.fieldViolations) {
      violations.set(violation.field, [
        ...(violations.get(violation.field) ?? []),
        violation.description,
      ]);
    }
  }
  return violations;
}
