import { useSignal, useSignalEffect } from "@preact/signals";
import { filter, setFilter } from "../view";
import { statusName, STATUSES } from "../format";
import {
  CHART_SECONDS,
  COUNT_LIMIT,
  counts,
  countsError,
  finishedPerSecond,
  finishedVersion,
} from "../overview";
import { pageVisible } from "../schedule";
import { StatusBadge } from "./StatusBadge";

/** Counts by status; each one filters the table by its status. */
function Counts() {
  const shown = counts.value;
  const selected = filter.value.status;
  return (
    <ul class="counts" aria-label="Jobs by status">
      {STATUSES.map((status) => {
        const count = shown.get(status);
        const name = statusName(status);
        const text =
          count === undefined
            ? "…"
            : count.more || count.count > COUNT_LIMIT
              ? `${COUNT_LIMIT}+`
              : String(count.count);
        return (
          <li key={name}>
            <button
              type="button"
              class="count"
              aria-pressed={selected === status}
              title={`Show only ${name} jobs`}
              data-count-status={name}
              onClick={() =>
                setFilter({ ...filter.value, status: selected === status ? null : status })
              }
            >
              <span class="count-value">{text}</span>
              <StatusBadge status={status} />
            </button>
          </li>
        );
      })}
    </ul>
  );
}

const WIDTH = 600;
const HEIGHT = 120;

/** The smallest of 1, 2, 5, 10, 20, 50... at or above `value`. */
function niceCeiling(value: number): number {
  let scale = 1;
  for (;;) {
    for (const step of [1, 2, 5]) {
      if (step * scale >= value) {
        return step * scale;
      }
    }
    scale *= 10;
  }
}

/** Jobs finished per second over the last CHART_SECONDS, as one SVG path, redrawn each second. */
function ThroughputChart() {
  const now = useSignal(Date.now());
  useSignalEffect(() => {
    if (!pageVisible.value) {
      return undefined;
    }
    const timer = setInterval(() => {
      now.value = Date.now();
    }, 1000);
    return () => clearInterval(timer);
  });
  void finishedVersion.value; // redraw when finished jobs are seen, not only on the tick
  const buckets = finishedPerSecond(now.value);
  const peak = Math.max(0, ...buckets);
  const top = niceCeiling(Math.max(peak, 1));
  const step = WIDTH / CHART_SECONDS;
  let path = "";
  buckets.forEach((count, index) => {
    if (count > 0) {
      const height = (count / top) * HEIGHT;
      path += `M${(index * step).toFixed(2)} ${HEIGHT}v${(-height).toFixed(2)}h${step.toFixed(2)}v${height.toFixed(2)}z`;
    }
  });
  const lastMinute = buckets.slice(-60).reduce((sum, count) => sum + count, 0);
  const summary =
    `Jobs finished per second over the last ${CHART_SECONDS / 60} minutes: ` +
    `${lastMinute} in the last minute, at most ${peak} in one second.`;
  return (
    <figure class="chart">
      <figcaption>
        <span>Finished per second, last {CHART_SECONDS / 60} minutes</span>
        <span class="chart-figures" data-last-minute={lastMinute}>
          {lastMinute} in the last minute · peak {peak}/s
        </span>
      </figcaption>
      <div class="chart-frame">
        <span class="chart-top" aria-hidden="true">
          {top}/s
        </span>
        <svg
          viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
          preserveAspectRatio="none"
          role="img"
          aria-label={summary}
        >
          <line class="chart-grid" x1="0" x2={WIDTH} y1={HEIGHT / 2} y2={HEIGHT / 2} />
          <path class="chart-bars" d={path} />
        </svg>
      </div>
      <div class="chart-axis" aria-hidden="true">
        <span>−{CHART_SECONDS / 60} min</span>
        <span>now</span>
      </div>
    </figure>
  );
}

export function Overview() {
  return (
    <section class="overview card" aria-labelledby="overview-title">
      <h2 id="overview-title">Overview</h2>
      <Counts />
      {countsError.value && (
        <p class="error" role="status">
          Counts: {countsError.value}
        </p>
      )}
      <ThroughputChart />
    </section>
  );
}
