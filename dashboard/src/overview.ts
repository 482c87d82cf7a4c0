/**
 * The overview: how many jobs have each status, and how many finished each second lately.
 *
 * Counts come from one ListJobs page per status (at most COUNT_LIMIT jobs, so a bounded
 * request; beyond it the page says "1000+"), read when the WatchJobs stream (stream.ts) opens
 * afresh and every COUNT_READ_INTERVAL_MS after, and kept current in between by the stream's
 * changes: each moves one job from the status it had to the one it has. The chart counts the
 * finished jobs the page has seen, from the stream and every read it makes, by the second
 * their final state was reached (updated_at).
 */
import { signal } from "@preact/signals";
import { describeError, handleCallError, jobs } from "./api";
import { JobStatus, type Job } from "./gen/jobs/v1/jobs_service_pb";
import { compareTimes, isFinal, ms, statusName, STATUSES } from "./format";
import { flushChanges, streamState, subscribe, type JobChange } from "./stream";

/** ListJobs' largest page: counts above it are shown as "1000+". */
export const COUNT_LIMIT = 1000;
/**
 * How often the counts are read again, to correct what the changes cannot tell (jobs the
 * retention deleted, a change whose previous status was guessed wrong). It is also what
 * notices a revoked key: an open stream outlives its key.
 */
const COUNT_READ_INTERVAL_MS = 15_000;
/** How far back the chart goes, in one-second buckets. */
export const CHART_SECONDS = 300;

export interface StatusCount {
  readonly count: number;
  /** At least `count`, maybe more: the read's page was full and another one followed. */
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

/**
 * The status a job had before the change numbered `sequence`, or null before its creation
 * (sequence 1). A job is PENDING at its odd sequences and IN_PROGRESS at its even ones until
 * its final state: a worker takes a PENDING job, and a job whose worker was lost goes back to
 * PENDING (jobcore/sql/queries.sql: claim_jobs, requeue_expired).
 */
function statusBefore(sequence: number): JobStatus | null {
  if (sequence <= 1) {
    return null;
  }
  return (sequence - 1) % 2 === 1 ? JobStatus.PENDING : JobStatus.IN_PROGRESS;
}

type Counts = Map<JobStatus, StatusCount>;

function add(next: Counts, status: JobStatus, delta: number): void {
  const current = next.get(status) ?? { count: 0, more: false };
  next.set(status, { ...current, count: Math.max(0, current.count + delta) });
}

/** Whether `read` (a state the counts include) is `change` or a later state of the same job. */
function covers(read: Job, change: Job): boolean {
  const order = compareTimes(read.updatedAt, change.updatedAt);
  return order > 0 || (order === 0 && (read.status === change.status || isFinal(read)));
}

/**
 * Move the changed job from the status the counts have it in to its new one. `counted` holds
 * the states the last read counted, for the jobs no later change has reached yet: a change
 * that read already saw (it arrived after the read) moves nothing.
 */
function applyChange(next: Counts, counted: Map<string, Job>, { job, sequence }: JobChange): void {
  const read = counted.get(job.id);
  let from: JobStatus | null;
  if (read !== undefined) {
    if (covers(read, job)) {
      return;
    }
    counted.delete(job.id); // later changes of this job are after the read: none is counted
    from = read.status;
  } else {
    from = statusBefore(sequence);
  }
  if (from === job.status) {
    return;
  }
  if (from !== null) {
    add(next, from, -1);
  }
  add(next, job.status, 1);
}

/** What the last read counted, for the jobs that have not changed since. */
let counted = new Map<string, Job>();
/** The changes that arrived during the read in progress, to apply over what it returns. */
let arrivedDuringRead: JobChange[] | null = null;

async function readCounts(signal: AbortSignal): Promise<void> {
  flushChanges(); // what arrived until now is older than what this read returns
  const arrived: JobChange[] = [];
  arrivedDuringRead = arrived;
  const next: Counts = new Map();
  const read = new Map<string, Job>();
  const seen: Job[] = [];
  try {
    for (const status of STATUSES) {
      const response = await jobs.listJobs(
        { filter: `status = "${statusName(status)}"`, pageSize: COUNT_LIMIT },
        { signal },
      );
      next.set(status, { count: response.jobs.length, more: response.nextPageToken !== "" });
      for (const job of response.jobs) {
        // A job that changed between two of these reads is in both: it counts where it is now.
        const other = read.get(job.id);
        if (other === undefined) {
          read.set(job.id, job);
        } else if (covers(other, job)) {
          add(next, job.status, -1);
        } else {
          add(next, other.status, -1);
          read.set(job.id, job);
        }
      }
      seen.push(...response.jobs);
    }
    flushChanges(); // now `arrived` holds every change that came during the read
    for (const change of arrived) {
      applyChange(next, read, change);
    }
    counted = read;
    counts.value = next;
    countsError.value = "";
    sawJobs(seen);
  } catch (error) {
    if (handleCallError(error) === "failed") {
      countsError.value = describeError(error);
    }
  } finally {
    if (arrivedDuringRead === arrived) {
      arrivedDuringRead = null;
    }
  }
}

/** Start counting; returns the function that stops it. */
export function startOverview(): () => void {
  let controller: AbortController | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  /** A read fell due while the stream was down: read when it is back. */
  let due = false;

  const readNow = (): void => {
    clearTimeout(timer);
    due = false;
    controller?.abort();
    const mine = new AbortController();
    controller = mine;
    void readCounts(mine.signal).finally(() => {
      if (controller === mine) {
        controller = null;
        timer = setTimeout(whenDue, COUNT_READ_INTERVAL_MS);
      }
    });
  };
  const whenDue = (): void => {
    if (streamState.peek() === "live") {
      readNow();
    } else {
      due = true;
    }
  };

  const unsubscribe = subscribe({
    opened(fresh) {
      if (fresh || due) {
        readNow();
      }
    },
    changes(batch) {
      arrivedDuringRead?.push(...batch);
      sawJobs(batch.map((change) => change.job));
      if (counts.peek().size === 0) {
        return; // nothing read yet: the first read counts these
      }
      const next: Counts = new Map(counts.peek());
      for (const change of batch) {
        applyChange(next, counted, change);
      }
      counts.value = next;
    },
  });
  return () => {
    unsubscribe();
    clearTimeout(timer);
    controller?.abort();
  };
}
