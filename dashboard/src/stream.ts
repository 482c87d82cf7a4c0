/**
 * The page's one WatchJobs stream: every change of the tenant's jobs, in commit order. The
 * table (live.ts) and the overview (overview.ts) both follow it, so the page holds at most two
 * streams (this one and the open job's WatchJob) of a browser's six HTTP/1.1 connections.
 *
 * A stream opened without a cursor starts with a heartbeat carrying where it starts; from
 * then on it misses nothing, so what the page reads with ListJobs after that message, kept
 * current with the changes after it, is current. Every message carries a cursor: a broken
 * stream resumes after the last one (after a short backoff) and gets exactly the changes it
 * missed. A cursor the service no longer takes (INVALID_ARGUMENT: too old), or a break longer
 * than RESYNC_AFTER_MS, starts afresh instead: a new stream, then everything read again.
 * The stream runs only while the tab is visible and the service accepts the key.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { effect, signal } from "@preact/signals";
import { access, describeError, handleCallError, jobs } from "./api";
import type { Job } from "./gen/jobs/v1/jobs_service_pb";
import { pageVisible, sleep } from "./schedule";

/** The first wait before resuming a broken stream; it doubles up to MAX_BACKOFF_MS. */
const INITIAL_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 15_000;
/**
 * Away longer than this (a broken stream, a hidden tab): read afresh rather than replay every
 * change since (a busy tenant's minute of changes is more than a page of jobs and its counts).
 */
const RESYNC_AFTER_MS = 60_000;
/**
 * A stream silent this long (or three times the longest gap seen between its messages, if
 * more) is taken for dead and resumed: heartbeats come while nothing changes, and a
 * connection lost without a reset would otherwise freeze the page.
 */
const MIN_STALL_MS = 60_000;
const STALL_CHECK_MS = 5000;
/** Changes are handed on in batches, at most this often: one render for a burst of changes. */
const FLUSH_MS = 100;

/** One change of one job, as WatchJobs sent it. */
export interface JobChange {
  /** The job right after the change (with its result on a final state). */
  readonly job: Job;
  /** Its position in the job's own history: 1 is its creation (PENDING). */
  readonly sequence: number;
}

export interface StreamListener {
  /**
   * A stream delivered its first message. `fresh`: it started without a cursor, so the page
   * may have missed changes before it: read again what the page shows.
   */
  opened(fresh: boolean): void;
  /** Changes in commit order, in batches. */
  changes(batch: readonly JobChange[]): void;
  /** An attempt to open or keep the stream failed; it is retried. */
  interrupted?(): void;
}

/** "connecting" until the first stream opens; "paused" while the tab is hidden. */
export type StreamState = "connecting" | "live" | "reconnecting" | "paused";
export const streamState = signal<StreamState>("connecting");
/** Why the stream last broke, while it is reconnecting; "" otherwise. */
export const streamError = signal("");

const listeners: StreamListener[] = [];
let pending: JobChange[] = [];
let flushTimer: ReturnType<typeof setTimeout> | undefined;

export function subscribe(listener: StreamListener): () => void {
  listeners.push(listener);
  return () => {
    const index = listeners.indexOf(listener);
    if (index >= 0) {
      listeners.splice(index, 1);
    }
  };
}

/**
 * Hand the changes received so far to the listeners now. A ListJobs read calls it when it
 * starts (what arrived before is older than what it reads) and when it ends (what arrived in
 * between is then in the listener's hands, to apply over what was read).
 */
export function flushChanges(): void {
  clearTimeout(flushTimer);
  flushTimer = undefined;
  if (pending.length === 0) {
    return;
  }
  const batch = pending;
  pending = [];
  for (const listener of listeners) {
    listener.changes(batch);
  }
}

function received(change: JobChange): void {
  pending.push(change);
  flushTimer ??= setTimeout(flushChanges, FLUSH_MS);
}

/** Where the last message left the stream: "" for none (the next stream starts afresh). */
let cursor = "";
/** When the last message arrived (performance.now()). */
let lastMessageAt = 0;
/** Whether a stream ever opened: "connecting" before, "reconnecting" after. */
let everOpened = false;

/** Follow the tenant's changes until `stop` aborts; resumes after breaks. */
async function follow(stop: AbortSignal): Promise<void> {
  let backoff = INITIAL_BACKOFF_MS;
  let longestGap = 0;
  while (!stop.aborted) {
    if (cursor !== "" && performance.now() - lastMessageAt > RESYNC_AFTER_MS) {
      cursor = "";
    }
    const resuming = cursor !== "";
    const attempt = new AbortController();
    const abortAttempt = () => attempt.abort();
    stop.addEventListener("abort", abortAttempt);
    let stalled = false;
    let heardAt = performance.now();
    // One check every few seconds rather than a timer per message: bursts are thousands.
    const watchdog = setInterval(() => {
      if (performance.now() - heardAt > Math.max(MIN_STALL_MS, 3 * longestGap)) {
        stalled = true;
        attempt.abort();
      }
    }, STALL_CHECK_MS);
    try {
      let first = true;
      for await (const message of jobs.watchJobs(
        { afterCursor: cursor },
        { signal: attempt.signal },
      )) {
        const now = performance.now();
        if (!first) {
          longestGap = Math.max(longestGap, now - heardAt);
        }
        heardAt = now;
        lastMessageAt = now;
        if (message.cursor) {
          cursor = message.cursor;
        }
        if (first) {
          first = false;
          everOpened = true;
          backoff = INITIAL_BACKOFF_MS;
          streamState.value = "live";
          streamError.value = "";
          // What arrived on the stream before this one belongs to the page it was read for.
          flushChanges();
          for (const listener of listeners) {
            listener.opened(!resuming);
          }
        }
        if (!message.heartbeat && message.job !== undefined) {
          received({ job: message.job, sequence: message.sequence });
        }
      }
      // WatchJobs never ends by itself: a proxy or a draining server ended it.
      streamError.value = "The stream ended.";
    } catch (error) {
      if (stop.aborted) {
        return; // hidden, or the key is gone: the effect below starts it again
      }
      if (stalled) {
        streamError.value = "No message for too long.";
      } else {
        if (handleCallError(error) === "unauthenticated") {
          return; // back to the key prompt
        }
        if (resuming && ConnectError.from(error).code === Code.InvalidArgument) {
          cursor = ""; // older than the service keeps: start afresh and read everything again
        }
        streamError.value = describeError(error);
      }
    } finally {
      clearInterval(watchdog);
      stop.removeEventListener("abort", abortAttempt);
    }
    streamState.value = everOpened ? "reconnecting" : "connecting";
    for (const listener of listeners) {
      listener.interrupted?.();
    }
    await sleep(backoff, stop);
    backoff = Math.min(2 * backoff, MAX_BACKOFF_MS);
  }
}

/** Start following the tenant's changes while the tab is visible and the key is accepted. */
export function startStream(): () => void {
  let running: AbortController | null = null;
  const dispose = effect(() => {
    const ready = access.value === "ready";
    const visible = pageVisible.value;
    running?.abort();
    running = null;
    if (!ready) {
      // Another key may be another tenant's: its stream starts afresh.
      cursor = "";
      streamState.value = everOpened ? "reconnecting" : "connecting";
      return;
    }
    if (!visible) {
      streamState.value = "paused";
      return;
    }
    streamState.value = everOpened ? "reconnecting" : "connecting";
    running = new AbortController();
    void follow(running.signal);
  });
  return () => {
    dispose();
    running?.abort();
  };
}
