/**
 * What the jobs table shows: its filter, page size and position. Page tokens are bound to the
 * filter, so a new filter or page size starts again at the newest jobs.
 */
import { computed, signal } from "@preact/signals";
import { filterExpression, NO_FILTER, type JobFilter } from "./filter";

export const PAGE_SIZES = [25, 50, 100, 200] as const;

export const filter = signal<JobFilter>(NO_FILTER);
export const pageSize = signal<number>(25);
/** The page_token of each page up to the one shown: [""] is the first page. */
export const pageTokens = signal<readonly string[]>([""]);

/** What ListJobs is asked for the page shown. */
export interface PageRequest {
  readonly filter: string;
  readonly pageSize: number;
  readonly pageToken: string;
}

export const pageRequest = computed<PageRequest>(() => ({
  filter: filterExpression(filter.value),
  pageSize: pageSize.value,
  pageToken: pageTokens.value[pageTokens.value.length - 1] ?? "",
}));

/** 1 for the newest jobs. */
export const pageNumber = computed(() => pageTokens.value.length);

export function setFilter(next: JobFilter): void {
  filter.value = next;
  pageTokens.value = [""];
}

export function setPageSize(next: number): void {
  pageSize.value = next;
  pageTokens.value = [""];
}

/** Older jobs: the page after this one. */
export function nextPage(token: string): void {
  if (token) {
    pageTokens.value = [...pageTokens.value, token];
  }
}

/** Newer jobs: the page before this one. */
export function previousPage(): void {
  if (pageTokens.value.length > 1) {
    pageTokens.value = pageTokens.value.slice(0, -1);
  }
}
