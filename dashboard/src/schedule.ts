/** Repeated calls that run only while someone can see them. */
import { effect, signal, untracked } from "@preact/signals";
import { access } from "./api";

/** Whether the tab is visible: hidden tabs make no calls. */
export const pageVisible = signal(document.visibilityState === "visible");
document.addEventListener("visibilitychange", () => {
  pageVisible.value = document.visibilityState === "visible";
});

/** Whether repeated calls may run: the tab is visible and the service accepted the key. */
function mayRun(): boolean {
  return pageVisible.value && access.value === "ready";
}

export interface Repeating {
  /** Run now (or right after the run in progress), then on the usual schedule. */
  poke(): void;
  /** Stop for good; a run in progress is aborted. */
  stop(): void;
}

/**
 * Runs `tick` at once, then `intervalMs` after each run ends (runs never overlap), while the tab
 * is visible and the service accepts the key; it resumes at once when both hold again.
 */
export function repeat(intervalMs: number, tick: (signal: AbortSignal) => Promise<void>): Repeating {
  const controller = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running = false;
  let again = false;

  const run = async (): Promise<void> => {
    timer = undefined;
    if (controller.signal.aborted || running || !mayRun()) {
      return;
    }
    running = true;
    again = false;
    try {
      await tick(controller.signal);
    } finally {
      running = false;
    }
    if (!controller.signal.aborted && timer === undefined) {
      timer = setTimeout(() => void run(), again ? 0 : intervalMs);
    }
  };

  const dispose = effect(() => {
    if (mayRun()) {
      untracked(() => {
        if (!running && timer === undefined) {
          void run();
        }
      });
    }
  });

  return {
    poke() {
      if (running) {
        again = true;
        return;
      }
      clearTimeout(timer);
      timer = undefined;
      void run();
    },
    stop() {
      dispose();
      clearTimeout(timer);
      controller.abort();
    },
  };
}
