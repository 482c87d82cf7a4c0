/** Names and times as the page shows them. */
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { JobStatus, Operation, type Job } from "./gen/jobs/v1/jobs_service_pb";

/** The statuses a job can have, in the order of its life. */
export const STATUSES = [
  JobStatus.PENDING,
  JobStatus.IN_PROGRESS,
  JobStatus.SUCCESS,
  JobStatus.FAILED,
  JobStatus.CANCELLED,
] as const;

export const FINAL_STATUSES: ReadonlySet<JobStatus> = new Set([
  JobStatus.SUCCESS,
  JobStatus.FAILED,
  JobStatus.CANCELLED,
]);

export const OPERATIONS = [Operation.square_sum, Operation.cube_sum] as const;

/** The enum value's name, as the API spells it (`IN_PROGRESS`, `square_sum`). */
export function statusName(status: JobStatus): string {
  return JobStatus[status] ?? `STATUS_${status}`;
}

export function operationName(operation: Operation): string {
  return Operation[operation] ?? `OPERATION_${operation}`;
}

export function isFinal(job: Job): boolean {
  return FINAL_STATUSES.has(job.status);
}

/** Milliseconds since the epoch, truncated (a time is never shown later than it happened). */
export function ms(timestamp: Timestamp | undefined): number {
  return timestamp === undefined
    ? 0
    : Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1_000_000);
}

/** Negative, zero or positive as `a` is before, at or after `b` (to the nanosecond). */
export function compareTimes(a: Timestamp | undefined, b: Timestamp | undefined): number {
  const seconds = (a?.seconds ?? 0n) - (b?.seconds ?? 0n);
  return seconds !== 0n ? (seconds < 0n ? -1 : 1) : (a?.nanos ?? 0) - (b?.nanos ?? 0);
}

/** ListJobs' order, newest first: by creation time, then by id, both descending. */
export function newestFirst(a: Job, b: Job): number {
  const created = compareTimes(b.createdAt, a.createdAt);
  return created !== 0 ? created : a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/** Which of two states of one job is the later one (a final state wins a tie). */
export function newer(a: Job, b: Job): Job {
  const difference = ms(a.updatedAt) - ms(b.updatedAt);
  if (difference !== 0) {
    return difference > 0 ? a : b;
  }
  return isFinal(b) && !isFinal(a) ? b : a;
}

const TIME = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  fractionalSecondDigits: 3,
  hour12: false,
});
const DATE = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

/** Local time of day with milliseconds, and the date too when it is not today. */
export function shortTime(timestamp: Timestamp | undefined): string {
  if (timestamp === undefined) {
    return "";
  }
  const date = new Date(ms(timestamp));
  const today = new Date();
  const time = TIME.format(date);
  return date.toDateString() === today.toDateString() ? time : `${DATE.format(date)} ${time}`;
}

/** The exact instant, for a tooltip. */
export function isoTime(timestamp: Timestamp | undefined): string {
  return timestamp === undefined ? "" : new Date(ms(timestamp)).toISOString();
}

/** A result as the service computed it, without float noise hiding the digits that matter. */
export function formatNumber(value: number): string {
  return Number.isInteger(value) && Math.abs(value) < 1e21
    ? value.toLocaleString("en-US", { useGrouping: false })
    : String(value);
}
