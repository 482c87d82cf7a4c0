/**
 * The open job: its whole history, followed live with one WatchJob stream (the page's second,
 * beside the WatchJobs stream of stream.ts; it ends with the job's final state), and cancelling
 * it.
 *
 * WatchJob with after_sequence=0 starts from the current state; with after_sequence=N it first
 * replays every change after N. A job's first state (sequence 1) is always PENDING at its
 * creation time, with no attempt yet, which GetResult tells; so the page reads the job, shows
 * sequence 1 from it, and watches with after_sequence=1: the replay is the rest of the history
 * and the stream goes on with each change as it happens. A broken stream resumes after the last
 * sequence it delivered.
 */
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { signal } from "@preact/signals";
import { Code, ConnectError } from "@connectrpc/connect";
import { describeError, handleCallError, jobs } from "./api";
import { JobStatus, type Job } from "./gen/jobs/v1/jobs_service_pb";
import { isFinal, newer } from "./format";
import { sawJobs } from "./overview";
import { sleep } from "./schedule";

/** How long to wait before resuming a watch the network or the gateway broke. */
const RESUME_DELAY_MS = 1000;

export interface HistoryEntry {
  readonly sequence: number;
  readonly status: JobStatus;
  readonly at: Timestamp | undefined;
  readonly attempts: number;
}

export interface OpenJob {
  readonly id: string;
  /** null until GetResult answers. */
  readonly job: Job | null;
  readonly history: readonly HistoryEntry[];
  /** "watching" while the stream is open, "ended" after the final state, "failed" on an error. */
  readonly stream: "starting" | "watching" | "reconnecting" | "ended" | "failed";
  readonly error: string;
  readonly cancelError: string;
  readonly cancelling: boolean;
}

export const openJob = signal<OpenJob | null>(null);

let following: AbortController | null = null;

function update(id: string, change: Partial<OpenJob>): void {
  const current = openJob.peek();
  if (current !== null && current.id === id) {
    openJob.value = { ...current, ...change };
  }
}

async function follow(id: string, signal: AbortSignal): Promise<void> {
  let job: Job;
  try {
    job = await jobs.getResult({ jobId: id }, { signal });
  } catch (error) {
    if (handleCallError(error) === "failed") {
      update(id, { stream: "failed", error: describeError(error) });
    }
    return;
  }
  const history: HistoryEntry[] = [
    { sequence: 1, status: JobStatus.PENDING, at: job.createdAt, attempts: 0 },
  ];
  update(id, { job, history: [...history], stream: "watching" });
  sawJobs([job]);
  let after = 1;
  while (!signal.aborted) {
    try {
      for await (const message of jobs.watchJob({ jobId: id, afterSequence: after }, { signal })) {
        if (message.job === undefined || message.heartbeat || message.sequence <= after) {
          continue;
        }
        after = message.sequence;
        history.push({
          sequence: message.sequence,
          status: message.job.status,
          at: message.job.updatedAt,
          attempts: message.job.attempts,
        });
        job = newer(message.job, job);
        update(id, { job, history: [...history], stream: "watching", error: "" });
        sawJobs([message.job]);
      }
      // The stream ends after the final state.
      update(id, { stream: isFinal(job) ? "ended" : "reconnecting" });
      if (isFinal(job)) {
        return;
      }
    } catch (error) {
      const outcome = handleCallError(error);
      if (outcome !== "failed") {
        return;
      }
      const code = ConnectError.from(error).code;
      if (code === Code.NotFound || code === Code.InvalidArgument || code === Code.PermissionDenied) {
        update(id, { stream: "failed", error: describeError(error) });
        return;
      }
      update(id, { stream: "reconnecting", error: describeError(error) });
    }
    await sleep(RESUME_DELAY_MS, signal);
  }
}

/** Show job `id` and follow it; the previous job's stream is closed. */
export function showJob(id: string): void {
  if (openJob.peek()?.id === id) {
    return;
  }
  following?.abort();
  following = new AbortController();
  openJob.value = {
    id,
    job: null,
    history: [],
    stream: "starting",
    error: "",
    cancelError: "",
    cancelling: false,
  };
  void follow(id, following.signal);
}

/** Close the detail and its stream. */
export function closeJob(): void {
  following?.abort();
  following = null;
  openJob.value = null;
}

/** Cancel the open job; the watch shows CANCELLED as it happens. */
export async function cancelOpenJob(): Promise<void> {
  const current = openJob.peek();
  if (current === null) {
    return;
  }
  const { id } = current;
  update(id, { cancelling: true, cancelError: "" });
  try {
    const cancelled = await jobs.cancelJob({ jobId: id });
    const latest = openJob.peek()?.job;
    update(id, { cancelling: false, job: latest ? newer(cancelled, latest) : cancelled });
    sawJobs([cancelled]);
  } catch (error) {
    if (handleCallError(error) === "failed") {
      update(id, { cancelling: false, cancelError: describeError(error) });
    }
  }
}
