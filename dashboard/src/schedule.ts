/** Timing the page's calls: they run only while someone can see them. */
import { signal } from "@preact/signals";

/** Whether the tab is visible: the WatchJobs stream and the counts' reads stop while it is not. */
export const pageVisible = signal(document.visibilityState === "visible");
document.addEventListener("visibilitychange", () => {
  pageVisible.value = document.visibilityState === "visible";
});

/** Resolves after `delayMs`, or at once when `signal` aborts. */
export function sleep(delayMs: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, delayMs);
    signal.addEventListener("abort", done);
  });
}
