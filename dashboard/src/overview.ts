/**
 * The overview: how many jobs have each status, and how many finished each second lately.
 *
 * Counts come from one ListJobs page per status (at most COUNT_LIMIT jobs, so a bounded
 * request; beyond it the page says "1000+"), read one after another every few seconds. The
 * chart counts the finished jobs the page has seen, from every call it makes (these counts,
 * the table, the open job's watch), by the second their final state was reached (updated_at).
 */
import { signal } from "@preact/signals";
import { describeError, handleCallError, jobs } from "./api";
import { JobStatus, type Job } from "./gen/jobs/v1/jobs_service_pb";
import { isFinal, ms, statusName, STATUSES } from "./format";
import { repeat } from "./schedule";

/** ListJobs' largest page: counts above it are shown as "1000+". */
export const COUNT_LIMIT = 1000;
const COUNT_INTERVAL_MS = 3000;
/** How far back the chart goes, in one-second buckets. */
export const CHART_SECONDS = 300;

export interface StatusCount {
  readonly count: number;
  /** More than `count`: the page was full and another one follows. */
  readonly more: boolean;
}

export const counts = signal<ReadonlyMap<JobStatus, StatusCount>>(new Map());
export const countsError = signal("");

/** Finished jobs seen: id -> when they finished (ms since the epoch). */
const finishedAt = new Map<string, number>();
/** Bumped whenever finishedAt changes, so the chart redraws. */
export const finishedVersion = signal(0);

/** Record the finished jobs among `seen` for the chart. */
export function sawJobs(seen: readonly Job[]): void {
  const oldest = Date.now() - CHART_SECONDS * 1000;
  let added = 0;
  for (const job of seen) {
    if (isFinal(job) && !finishedAt.has(job.id)) {
      const at = ms(job.updatedAt);
      if (at >= oldest) {
        finishedAt.set(job.id, at);
        added += 1;
      }
    }
  }
  if (added > 0) {
    finishedVersion.value += 1;
  }
}

/** Jobs finished in each second of the last CHART_SECONDS, oldest first, ending at `nowMs`. */
export function finishedPerSecond(nowMs: number): number[] {
  const end = Math.floor(nowMs / 1000);
  const start = end - CHART_SECONDS + 1;
  const buckets = new Array<number>(CHART_SECONDS).fill(0);
  for (const [id, at] of finishedAt) {
    const second = Math.floor(at / 1000);
    if (second < start) {
      finishedAt.delete(id); // out of the window for good
    } else if (second <= end) {
      buckets[second - start] = (buckets[second - start] ?? 0) + 1;
    }
  }
  return buckets;
}

async function readCounts(signal: AbortSignal): Promise<void> {
  const next = new Map<JobStatus, StatusCount>();
  try {
    for (const status of STATUSES) {
      const response = await jobs.listJobs(
        { filter: `status = "${statusName(status)}"`, pageSize: COUNT_LIMIT },
        { signal },
      );
      next.set(status, { count: response.jobs.length, more: response.nextPageToken !== "" });
      sawJobs(response.jobs);
    }
    counts.value = next;
    countsError.value = "";
  } catch (error) {
    if (handleCallError(error) === "failed") {
      countsError.value = describeError(error);
    }
  }
}

/** Start counting; returns the function that stops it. */
export function startOverview(): () => void {
  const repeating = repeat(COUNT_INTERVAL_MS, readCounts);
  return () => repeating.stop();
}
