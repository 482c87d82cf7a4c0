/**
 * Keeps the table's page of jobs current: the one module that knows HOW the page stays live.
 *
 * There is no call yet that streams the changes of many jobs, and a browser talking HTTP/1.1
 * to the gateway has about six connections per host, so one WatchJob stream per row is out.
 * This module polls ListJobs for the page shown, about once a second and only while the tab is
 * visible. When a stream of many jobs' changes exists (WatchJobs), only this module changes:
 * it keeps `livePage` and `liveError` current for `pageRequest`, and feeds what it sees to
 * `sawJobs` (the overview's chart); nothing else depends on how.
 */
import { effect, signal } from "@preact/signals";
import { describeError, handleCallError, jobs } from "./api";
import { matches } from "./filter";
import type { Job } from "./gen/jobs/v1/jobs_service_pb";
import { sawJobs } from "./overview";
import { repeat } from "./schedule";
import { filter, pageRequest, type PageRequest } from "./view";

/** How often the page is asked for again. */
const POLL_INTERVAL_MS = 1000;

export interface LivePage {
  /** The request this page answers (a newer request may be on its way). */
  readonly request: PageRequest;
  readonly jobs: readonly Job[];
  readonly nextPageToken: string;
  /** When it was received (performance.now()). */
  readonly receivedAt: number;
}

export const livePage = signal<LivePage | null>(null);
/** Why the page could not be read the last time; "" when it could. */
export const liveError = signal("");

let poller: { poke(): void } | null = null;

/** Read the page again now (after a submit or a cancel, for instance). */
export function refreshLivePage(): void {
  poller?.poke();
}

/**
 * Put a job this page just submitted at the top of the first page at once (when the filter
 * selects it), then read the page again to confirm it.
 */
export function showSubmitted(job: Job): void {
  const page = livePage.peek();
  const request = pageRequest.peek();
  if (
    page !== null &&
    page.request === request &&
    request.pageToken === "" &&
    matches(job, filter.peek()) &&
    !page.jobs.some((shown) => shown.id === job.id)
  ) {
    livePage.value = { ...page, jobs: [job, ...page.jobs].slice(0, request.pageSize) };
  }
  refreshLivePage();
}

async function readPage(signal: AbortSignal): Promise<void> {
  const request = pageRequest.peek();
  try {
    const response = await jobs.listJobs(
      { filter: request.filter, pageSize: request.pageSize, pageToken: request.pageToken },
      { signal },
    );
    if (pageRequest.peek() !== request) {
      return; // the person moved on while this was on its way; the next read follows
    }
    livePage.value = {
      request,
      jobs: response.jobs,
      nextPageToken: response.nextPageToken,
      receivedAt: performance.now(),
    };
    liveError.value = "";
    sawJobs(response.jobs);
  } catch (error) {
    if (handleCallError(error) === "failed" && pageRequest.peek() === request) {
      liveError.value = describeError(error);
    }
  }
}

/** Start keeping the page live; returns the function that stops it. */
export function startLivePage(): () => void {
  const repeating = repeat(POLL_INTERVAL_MS, readPage);
  poller = repeating;
  // A new filter, page size or page: read it at once.
  let first = true;
  const dispose = effect(() => {
    void pageRequest.value;
    if (first) {
      first = false;
      return;
    }
    repeating.poke();
  });
  return () => {
    dispose();
    repeating.stop();
    poller = null;
  };
}
