/**
 * Keeps the table's page of jobs current: the one module that knows HOW the table stays live.
 *
 * The page is read with ListJobs once the WatchJobs stream (stream.ts) has opened, and again
 * when the person asks for another filter, page size or page, or when the stream had to start
 * afresh; in between, each change from the stream is applied to the rows shown: a job shown
 * takes its new state in place (and leaves the page when it no longer matches the filter); a
 * job that now matches and is newer than the last row of the first page is put in its place
 * there (a new job at the top), the oldest row making way so the page keeps its size. Changes
 * that arrive while a page is being read are applied to what the read returns. Nothing is
 * read while nothing changes.
 */
import { effect, signal } from "@preact/signals";
import { access, describeError, handleCallError, jobs } from "./api";
import { matches, type JobFilter } from "./filter";
import { newer, newestFirst } from "./format";
import type { Job } from "./gen/jobs/v1/jobs_service_pb";
import { sawJobs } from "./overview";
import { flushChanges, subscribe, type JobChange } from "./stream";
import { filter, nextPage, pageRequest, type PageRequest } from "./view";

/**
 * After rows left a page that has more beyond it, it is read again this long after the last
 * one left, so that it is full again without a read per change.
 */
const REFILL_DELAY_MS = 1000;

export interface LivePage {
  /** The request this page answers (a newer request may be on its way). */
  readonly request: PageRequest;
  readonly jobs: readonly Job[];
  readonly nextPageToken: string;
  /**
   * Rows were pushed off the end by newer jobs since the page was read: the page token would
   * skip them, so the page is read again before the next one is asked for.
   */
  readonly overflowed: boolean;
}

export const livePage = signal<LivePage | null>(null);
/** Why the page could not be read the last time; "" when it could. */
export const liveError = signal("");

/** The read in progress, and the changes that arrived since it started. */
let reading: { readonly controller: AbortController; readonly arrived: JobChange[] } | null = null;
let refillTimer: ReturnType<typeof setTimeout> | undefined;

/**
 * `page` with the latest of `updates` applied (jobs in the order they changed, the last state
 * of a job the one that counts), for the filter the page was read with.
 */
function applyUpdates(page: LivePage, updates: readonly Job[], shownFilter: JobFilter): LivePage {
  const latest = new Map<string, Job>();
  for (const job of updates) {
    const before = latest.get(job.id);
    latest.set(job.id, before === undefined ? job : newer(job, before));
  }
  let changed = false;
  const rows: Job[] = [];
  for (const row of page.jobs) {
    const update = latest.get(row.id);
    if (update === undefined) {
      rows.push(row);
      continue;
    }
    latest.delete(row.id);
    const job = newer(update, row);
    if (job === row) {
      rows.push(row);
    } else if (matches(job, shownFilter)) {
      rows.push(job);
      changed = true;
    } else {
      changed = true; // it left the filter, as a read would show
    }
  }
  const { request } = page;
  let overflowed = page.overflowed;
  // Only the first page takes jobs in: later pages start after a fixed job (their token), and
  // their jobs are older than any job created now.
  if (request.pageToken === "") {
    const last = rows[rows.length - 1];
    const nothingBeyond = page.nextPageToken === "" && !page.overflowed;
    const entering = [...latest.values()].filter(
      (job) =>
        matches(job, shownFilter) &&
        (last === undefined ? nothingBeyond : newestFirst(job, last) < 0 || nothingBeyond),
    );
    if (entering.length > 0) {
      rows.push(...entering);
      rows.sort(newestFirst);
      if (rows.length > request.pageSize) {
        rows.length = request.pageSize;
        overflowed = true;
      }
      changed = true;
    }
  }
  if (!changed) {
    return page;
  }
  if (rows.length < request.pageSize && (page.nextPageToken !== "" || overflowed)) {
    scheduleRefill();
  }
  return { ...page, jobs: rows, overflowed };
}

/** Apply changes to the page shown (when it is the one asked for). */
function applyToShown(updates: readonly Job[]): void {
  const page = livePage.peek();
  if (page !== null && page.request === pageRequest.peek()) {
    const next = applyUpdates(page, updates, filter.peek());
    if (next !== page) {
      livePage.value = next;
    }
  }
}

function scheduleRefill(): void {
  clearTimeout(refillTimer);
  refillTimer = setTimeout(() => void readPage(), REFILL_DELAY_MS);
}

/** Read the page asked for; changes that arrive meanwhile are applied to what it returns. */
async function readPage(): Promise<LivePage | null> {
  clearTimeout(refillTimer);
  if (access.peek() !== "ready") {
    return null;
  }
  flushChanges(); // what arrived until now is older than what this read returns
  reading?.controller.abort();
  const current = { controller: new AbortController(), arrived: [] as JobChange[] };
  reading = current;
  const request = pageRequest.peek();
  try {
    const response = await jobs.listJobs(
      { filter: request.filter, pageSize: request.pageSize, pageToken: request.pageToken },
      { signal: current.controller.signal },
    );
    if (reading !== current || pageRequest.peek() !== request) {
      return null; // the person moved on while this was on its way; the newer read follows
    }
    flushChanges(); // now `arrived` holds every change that came during the read
    const read: LivePage = {
      request,
      jobs: response.jobs,
      nextPageToken: response.nextPageToken,
      overflowed: false,
    };
    const page = applyUpdates(
      read,
      current.arrived.map((change) => change.job),
      filter.peek(),
    );
    livePage.value = page;
    liveError.value = "";
    sawJobs(response.jobs);
    return page;
  } catch (error) {
    if (handleCallError(error) === "failed" && reading === current) {
      liveError.value = describeError(error);
    }
    return null;
  } finally {
    if (reading === current) {
      reading = null;
    }
  }
}

/**
 * Put a job this page just submitted on the first page at once (when the filter selects it);
 * the stream then brings its changes.
 */
export function showSubmitted(job: Job): void {
  applyToShown([job]);
}

/**
 * Older jobs: the page after the one shown. If newer jobs pushed rows off its end, its token
 * would skip them: the page is read again first, for a token after its last row now.
 */
export async function olderPage(): Promise<void> {
  const page = livePage.peek();
  if (page === null || page.request !== pageRequest.peek()) {
    return;
  }
  const current = page.overflowed ? await readPage() : page;
  if (current !== null) {
    nextPage(current.nextPageToken);
  }
}

/** Start keeping the page live; returns the function that stops it. */
export function startLivePage(): () => void {
  const unsubscribe = subscribe({
    opened(fresh) {
      if (fresh || livePage.peek() === null) {
        void readPage();
      }
    },
    changes(batch) {
      reading?.arrived.push(...batch);
      applyToShown(batch.map((change) => change.job));
    },
    interrupted() {
      // Show the jobs while the stream is retried: the first stream that opens reads again.
      const page = livePage.peek();
      if (reading === null && (page === null || page.request !== pageRequest.peek())) {
        void readPage();
      }
    },
  });
  // A new filter, page size or page: read it at once.
  let first = true;
  const dispose = effect(() => {
    void pageRequest.value;
    if (first) {
      first = false;
      return;
    }
    void readPage();
  });
  return () => {
    dispose();
    unsubscribe();
    clearTimeout(refillTimer);
    reading?.controller.abort();
  };
}
