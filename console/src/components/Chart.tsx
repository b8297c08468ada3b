// A line chart of one or more `[step, value]` series, drawn by uPlot on a canvas. Series may
// have different steps; they are aligned on the union of steps and gaps are spanned. The chart
// follows its container's width, and the page asks the API for about that many points per
// series, so a million-point run draws as fast as a small one.

import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

/** One named series. */
export interface ChartSeries {
  name: string;
  points: [number, number][];
}

/** Props of a chart. */
export interface ChartProps {
  title: string;
  series: ChartSeries[];
  height?: number;
  /** Accessible description of what the chart shows. */
  description?: string;
  yLabel?: string;
}

/** Series colours, chosen to stay apart on dark and light backgrounds. */
export const PALETTE = [
  '#4e9af1',
  '#f28e2b',
  '#59a14f',
  '#e15759',
  '#b07aa1',
  '#76b7b2',
  '#edc948',
  '#ff9da7',
  '#9c755f',
  '#bab0ac',
];

function cssVar(name: string, fallback: string): string {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

/** Aligns the series on one x axis (the union of their steps). */
function align(series: ChartSeries[]): uPlot.AlignedData {
  if (series.length === 0) return [[]];
  const tables = series.map(
    (s) => [s.points.map((p) => p[0]), s.points.map((p) => p[1])] as uPlot.AlignedData,
  );
  return uPlot.join(tables);
}

function options(props: ChartProps, width: number): uPlot.Options {
  const axisColor = cssVar('--muted', '#9aa4b2');
  const gridColor = cssVar('--grid', 'rgba(128,128,128,0.15)');
  const axis = {
    stroke: axisColor,
    grid: { stroke: gridColor, width: 1 },
    ticks: { stroke: gridColor, width: 1 },
  };
  return {
    width,
    height: props.height ?? 220,
    legend: { show: true, live: true },
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: false } },
    axes: [
      { ...axis, label: 'step' },
      { ...axis, label: props.yLabel, size: 60 },
    ],
    series: [
      { label: 'step' },
      ...props.series.map((s, i) => ({
        label: s.name,
        stroke: PALETTE[i % PALETTE.length],
        width: 1.5,
        spanGaps: true,
        // uPlot draws the points themselves only where they are sparse (an evaluation every
        // few thousand steps), so a series of one point is still visible.
        points: { size: 5 },
      })),
    ],
  };
}

/** A uPlot line chart that redraws in place when its data changes. */
export function Chart(props: ChartProps) {
  const holder = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const names = props.series.map((s) => s.name).join('\u0000');
  const hasData = props.series.some((s) => s.points.length > 0);

  useEffect(() => {
    const el = holder.current;
    if (!el || !hasData) return;
    const width = Math.max(200, el.clientWidth);
    plot.current = new uPlot(options(props, width), align(props.series), el);
    const resize = new ResizeObserver(() => {
      const w = Math.max(200, el.clientWidth);
      if (plot.current && Math.abs(plot.current.width - w) > 2) {
        plot.current.setSize({ width: w, height: props.height ?? 220 });
      }
    });
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
    // Rebuilt only when the set of series changes; data changes go through setData below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [names, hasData]);

  useEffect(() => {
    plot.current?.setData(align(props.series));
  }, [props.series]);

  const total = props.series.reduce((n, s) => n + s.points.length, 0);
  return (
    <figure class="chart" aria-label={props.title} data-points={total}>
      <figcaption>{props.title}</figcaption>
      {props.description && <p class="sr-only">{props.description}</p>}
      {hasData ? (
        <div ref={holder} class="chart-canvas" role="img" aria-label={chartSummary(props)} />
      ) : (
        <p class="muted chart-empty">No data yet.</p>
      )}
    </figure>
  );
}

/** A short text alternative: each series' last value. */
function chartSummary(props: ChartProps): string {
  const parts = props.series
    .filter((s) => s.points.length > 0)
    .map((s) => {
      const [step, value] = s.points[s.points.length - 1];
      return `${s.name} ${Number(value.toPrecision(4))} at step ${step}`;
    });
  return `${props.title}: ${parts.join('; ')}`;
}
