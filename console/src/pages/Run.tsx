// One run: live charts, the spec, attempts, logs that follow, checkpoints with downloads, and
// cancel / retry. Charts start from the API's downsampled series (about one point per pixel)
// and then grow from the run's SSE stream.

import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { api, downloadFile, get, type StreamEvent, followEvents } from '../api';
import { Chart, type ChartSeries } from '../components/Chart';
import { ErrorBox, ProgressBar, Section, StatusBadge, usePoll } from '../components/common';
import { accuracy, bytes, duration, num, percent, shortId, when } from '../format';
import type { Checkpoint, LogLine, Run } from '../types';

/** A chart and the metric names it draws. */
interface ChartGroup {
  title: string;
  match: (name: string) => boolean;
}

/** The run page's charts, in the order of MPL.md's per-step log. */
export const CHART_GROUPS: ChartGroup[] = [
  {
    title: 'Losses (teacher and student)',
    match: (n) => /^(teacher|student)\/(loss|sup|uda|mpl)$/.test(n),
  },
  {
    title: 'Feedback h and its baseline',
    match: (n) => n === 'h' || n === 'h_baseline' || n === 'h_used',
  },
  { title: 'UDA mask rate', match: (n) => /mask_rate$/.test(n) },
  { title: 'Pseudo labels', match: (n) => n.startsWith('pseudo/') },
  { title: 'Learning rates', match: (n) => /(^|\/|_)lr(\/|$)|learning_rate/.test(n) },
  { title: 'Images per second', match: (n) => /images_per_sec$/.test(n) },
  { title: 'Accuracy (top-1)', match: (n) => /top1$/.test(n) },
  { title: 'Evaluation loss', match: (n) => /^(eval|validation)\/[a-z_]+\/loss$/.test(n) },
];

type SeriesMap = Map<string, [number, number][]>;

/** How many points to ask for: about the pixel width of one chart. */
function pointsForCharts(): number {
  const columns = window.innerWidth > 1100 ? 2 : 1;
  return Math.max(200, Math.min(2000, Math.round(window.innerWidth / columns)));
}

/** Appends points that lie after a series' last step (the stream may repeat a few). */
function appendPoint(map: SeriesMap, name: string, step: number, value: number): void {
  if (!Number.isFinite(value)) return;
  let points = map.get(name);
  if (!points) {
    points = [];
    map.set(name, points);
  }
  const last = points[points.length - 1];
  if (last && step < last[0]) return;
  if (last && step === last[0]) last[1] = value;
  else points.push([step, value]);
}

/** The payload of an event, whether the API sends it bare or inside `{payload}`. */
function payloadOf(e: StreamEvent): Record<string, unknown> {
  const data = (e.data ?? {}) as Record<string, unknown>;
  const inner = data.payload;
  return inner && typeof inner === 'object' ? (inner as Record<string, unknown>) : data;
}

/** The run page. */
export function RunPage({ id }: { id: string }) {
  const run = usePoll(() => api.run(id), 10000, [id]);
  const attempts = usePoll(() => api.attempts(id), 0, [id]);
  const checkpoints = usePoll(() => api.checkpoints(id), 0, [id]);
  const [live, setLive] = useState<Partial<Run['progress']> | null>(null);
  const [series, setSeries] = useState<SeriesMap>(new Map());
  const [logs, setLogs] = useState<LogLine[]>([]);
  const [streamState, setStreamState] = useState('connecting');
  const [actionError, setActionError] = useState<unknown>(null);
  const [metricsError, setMetricsError] = useState<unknown>(null);
  const pending = useRef<SeriesMap>(new Map());
  const attemptRef = useRef(0);
  attemptRef.current = run.data?.attempt ?? attemptRef.current;

  useEffect(() => {
    let cancelled = false;
    let flushTimer: ReturnType<typeof setInterval> | null = null;
    let stop: (() => void) | null = null;
    const buffer: StreamEvent[] = [];
    let loaded = false;
    let lastLogId = 0;
    pending.current = new Map();
    setSeries(new Map());
    setLogs([]);

    const apply = (e: StreamEvent) => {
      const p = payloadOf(e);
      switch (e.event) {
        case 'metrics': {
          const step = Number(p.step);
          const values = (p.values ?? {}) as Record<string, number>;
          for (const [name, value] of Object.entries(values)) {
            appendPoint(pending.current, name, step, Number(value));
          }
          break;
        }
        case 'eval': {
          const model = String(p.model ?? 'model');
          const split = String(p.split ?? 'eval');
          for (const what of ['top1', 'top5', 'loss']) {
            appendPoint(
              pending.current,
              `${split}/${model}/${what}`,
              Number(p.step),
              Number(p[what]),
            );
          }
          break;
        }
        case 'progress':
          setLive({
            step: Number(p.step),
            total_steps: Number(p.total_steps),
            phase: typeof p.phase === 'string' ? p.phase : null,
            images_per_sec: Number(p.images_per_sec),
            eta_secs: Number(p.eta_secs),
          });
          if (Number.isFinite(Number(p.images_per_sec))) {
            appendPoint(
              pending.current,
              'images_per_sec',
              Number(p.step),
              Number(p.images_per_sec),
            );
          }
          break;
        case 'log':
          if (e.id !== null && e.id <= lastLogId) break;
          if (e.id !== null) lastLogId = e.id;
          setLogs((old) => [
            ...old.slice(-1999),
            {
              id: e.id ?? 0,
              attempt: attemptRef.current,
              line: String(p.line ?? ''),
              created_at: new Date().toISOString(),
            },
          ]);
          break;
        case 'status':
          void run.reload();
          void attempts.reload();
          void checkpoints.reload();
          break;
        case 'checkpoint':
          void checkpoints.reload();
          break;
        case 'attempt':
          void attempts.reload();
          break;
      }
    };

    const start = async () => {
      // Follow the stream at once and hold its events until the snapshot is in, so nothing
      // that happens between the two is lost.
      stop = followEvents(
        id,
        (e) => {
          setStreamState('live');
          if (loaded) apply(e);
          else buffer.push(e);
        },
        async () => {
          const latest = await api.run(id);
          const over = ['succeeded', 'failed', 'cancelled'].includes(latest.status);
          if (over) setStreamState('ended (run finished)');
          return over;
        },
      );
      try {
        const { names } = await api.metricNames(id);
        const initial: SeriesMap = new Map();
        if (names.length > 0) {
          const { series: loadedSeries } = await api.metrics(id, names, pointsForCharts());
          for (const s of loadedSeries)
            initial.set(
              s.name,
              s.points.map((p) => [p[0], p[1]]),
            );
        }
        const logPage = await api.logs(id);
        if (cancelled) return;
        pending.current = initial;
        setLogs(logPage.lines);
        loaded = true;
        lastLogId = logPage.lines.reduce((m, l) => Math.max(m, l.id), 0);
        for (const e of buffer) apply(e);
        buffer.length = 0;
      } catch (err) {
        loaded = true;
        setMetricsError(err);
      }
      setSeries(snapshot(pending.current));
      flushTimer = setInterval(() => {
        setSeries((old) => (sameShape(old, pending.current) ? old : snapshot(pending.current)));
      }, 500);
    };
    void start();
    return () => {
      cancelled = true;
      stop?.();
      if (flushTimer) clearInterval(flushTimer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [id]);

  const r = run.data;
  const progress = r ? { ...r.progress, ...(r.status === 'running' ? (live ?? {}) : {}) } : null;
  const fraction =
    progress && progress.total_steps ? (progress.step ?? 0) / progress.total_steps : 0;

  const act = async (what: 'cancel' | 'retry') => {
    setActionError(null);
    try {
      if (what === 'cancel') await api.cancelRun(id);
      else await api.retryRun(id);
      await run.reload();
    } catch (err) {
      setActionError(err);
    }
  };

  return (
    <div class="page">
      <div class="page-header">
        <div>
          <p class="crumbs">
            <a href="#/runs">Runs</a> /
          </p>
          <h1>
            {r?.name || `Run ${shortId(id)}`} {r && <StatusBadge status={r.status} />}
          </h1>
          <p class="muted mono small">{id}</p>
        </div>
        <div class="actions">
          <button
            type="button"
            class="danger"
            disabled={!r || !['queued', 'running'].includes(r.status) || r.cancel_requested}
            onClick={() => act('cancel')}
          >
            {r?.cancel_requested ? 'Cancelling…' : 'Cancel'}
          </button>
          <button
            type="button"
            disabled={!r || !['failed', 'cancelled'].includes(r.status)}
            onClick={() => act('retry')}
          >
            Retry
          </button>
        </div>
      </div>
      <ErrorBox error={run.error ?? actionError} />

      {r && progress && (
        <section class="card summary" aria-label="Summary">
          <dl class="facts">
            <div>
              <dt>Algorithm</dt>
              <dd>{r.algorithm}</dd>
            </div>
            <div>
              <dt>Step</dt>
              <dd data-testid="step">
                {progress.step ?? 0} / {progress.total_steps}
                {progress.phase ? ` (${progress.phase})` : ''}
              </dd>
            </div>
            <div class="wide">
              <dt>Progress</dt>
              <dd>
                <ProgressBar
                  fraction={r.status === 'succeeded' ? 1 : fraction}
                  eta={r.status === 'running' ? progress.eta_secs : null}
                  label="Run progress"
                />
              </dd>
            </div>
            <div>
              <dt>Images/s</dt>
              <dd>{num(progress.images_per_sec ?? undefined)}</dd>
            </div>
            <div>
              <dt>Best acc.</dt>
              <dd>{percent(accuracy(r.best_metrics))}</dd>
            </div>
            <div>
              <dt>Final acc.</dt>
              <dd>{percent(accuracy(r.final_metrics))}</dd>
            </div>
            <div>
              <dt>Attempt</dt>
              <dd>
                {r.attempt} of {r.max_attempts}
              </dd>
            </div>
            <div>
              <dt>Queue</dt>
              <dd>{r.queue_position ? `#${r.queue_position}` : '–'}</dd>
            </div>
            <div>
              <dt>Started</dt>
              <dd>{when(r.started_at)}</dd>
            </div>
            <div>
              <dt>Finished</dt>
              <dd>{when(r.finished_at)}</dd>
            </div>
            <div>
              <dt>Stream</dt>
              <dd>{streamState}</dd>
            </div>
          </dl>
          {r.failure_reason && (
            <p class="error-box" role="status">
              <strong>Failure:</strong> {r.failure_reason}
            </p>
          )}
        </section>
      )}

      <Section title="Charts">
        <ErrorBox error={metricsError} />
        <Charts series={series} />
      </Section>

      <div class="two-col">
        <Section title="Attempts">
          <ErrorBox error={attempts.error} />
          <table>
            <thead>
              <tr>
                <th scope="col">#</th>
                <th scope="col">Worker</th>
                <th scope="col">Started</th>
                <th scope="col">Ended</th>
                <th scope="col">Steps</th>
                <th scope="col">Exit</th>
              </tr>
            </thead>
            <tbody>
              {(attempts.data ?? []).map((a) => (
                <tr key={a.attempt}>
                  <td>{a.attempt}</td>
                  <td class="mono">{shortId(a.worker_id)}</td>
                  <td>{when(a.started_at)}</td>
                  <td>{when(a.ended_at)}</td>
                  <td>
                    {a.first_step ?? '–'}–{a.last_step ?? '–'}
                  </td>
                  <td>
                    {a.exit_reason ?? (a.ended_at ? '–' : 'running')}
                    {a.exit_code !== null && a.exit_code !== undefined
                      ? ` (code ${a.exit_code})`
                      : ''}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </Section>
        <Section title="Spec">
          <pre class="spec" tabIndex={0} aria-label="Run spec as JSON">
            {r ? JSON.stringify(r.spec, null, 2) : '…'}
          </pre>
        </Section>
      </div>

      <Section title="Checkpoints">
        <ErrorBox error={checkpoints.error} />
        <Checkpoints list={checkpoints.data ?? []} />
      </Section>

      <Section title="Logs">
        <Logs lines={logs} />
      </Section>
    </div>
  );
}

function snapshot(map: SeriesMap): SeriesMap {
  const copy: SeriesMap = new Map();
  for (const [k, v] of map) copy.set(k, v.slice());
  return copy;
}

function sameShape(a: SeriesMap, b: SeriesMap): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of b) {
    const old = a.get(k);
    if (!old || old.length !== v.length) return false;
    const x = old[old.length - 1];
    const y = v[v.length - 1];
    if (x && y && (x[0] !== y[0] || x[1] !== y[1])) return false;
  }
  return true;
}

function Charts({ series }: { series: SeriesMap }) {
  const groups = useMemo(() => {
    const names = [...series.keys()].sort();
    const used = new Set<string>();
    const out = CHART_GROUPS.map((g) => {
      const picked = names.filter((n) => g.match(n));
      picked.forEach((n) => used.add(n));
      return {
        title: g.title,
        series: picked.map((n) => ({ name: n, points: series.get(n) ?? [] })),
      };
    });
    const rest = names.filter((n) => !used.has(n));
    if (rest.length > 0) {
      out.push({
        title: 'Other metrics',
        series: rest.map((n) => ({ name: n, points: series.get(n) ?? [] })),
      });
    }
    return out as { title: string; series: ChartSeries[] }[];
  }, [series]);
  return (
    <div class="charts">
      {groups.map((g) => (
        <Chart key={g.title} title={g.title} series={g.series} />
      ))}
    </div>
  );
}

function Logs({ lines }: { lines: LogLine[] }) {
  const box = useRef<HTMLPreElement>(null);
  const [follow, setFollow] = useState(true);
  useEffect(() => {
    if (follow && box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [lines, follow]);
  return (
    <>
      <label class="inline">
        <input
          type="checkbox"
          checked={follow}
          onChange={(e) => setFollow((e.target as HTMLInputElement).checked)}
        />
        Follow
      </label>
      <pre class="logs" ref={box} tabIndex={0} aria-label="Trainer log" aria-live="off">
        {lines.length === 0
          ? 'No log lines yet.'
          : lines.map((l) => `[${l.attempt}] ${stripAnsi(l.line)}`).join('\n')}
      </pre>
    </>
  );
}

function Checkpoints({ list }: { list: Checkpoint[] }) {
  const [error, setError] = useState<unknown>(null);
  const [card, setCard] = useState<{ id: string; text: string } | null>(null);
  const run = async (task: () => Promise<void>) => {
    setError(null);
    try {
      await task();
    } catch (err) {
      setError(err);
    }
  };
  if (list.length === 0) return <p class="muted">No checkpoints yet.</p>;
  return (
    <>
      <ErrorBox error={error} />
      <div class="table-wrap">
        <table class="checkpoints">
          <thead>
            <tr>
              <th scope="col">Kind</th>
              <th scope="col">Step</th>
              <th scope="col">Attempt</th>
              <th scope="col">Size</th>
              <th scope="col">Metrics</th>
              <th scope="col">Files</th>
              <th scope="col">Student</th>
            </tr>
          </thead>
          <tbody>
            {list.map((c) => (
              <tr key={c.id} data-checkpoint-id={c.id} data-kind={c.kind}>
                <td>
                  <span class={`badge kind-${c.kind}`}>{c.kind}</span>
                </td>
                <td class="num">{c.step}</td>
                <td class="num">{c.attempt}</td>
                <td class="num">{bytes(c.size_bytes)}</td>
                <td class="small">
                  {Object.entries(c.metrics ?? {})
                    .slice(0, 4)
                    .map(([k, v]) => `${k} ${num(v)}`)
                    .join(', ') || '–'}
                </td>
                <td>
                  <ul class="files">
                    {c.files.map((f) => (
                      <li key={f.name}>
                        <button
                          type="button"
                          class="small-button"
                          data-file={f.name}
                          data-sha256={f.sha256}
                          aria-label={downloadLabel(c, f.name)}
                          onClick={() =>
                            run(() =>
                              downloadFile(
                                `/v1/checkpoints/${c.id}/files/${encodeURIComponent(f.name)}`,
                                f.name,
                              ),
                            )
                          }
                        >
                          ⤓ {f.name}
                        </button>{' '}
                        <span class="muted small">{bytes(f.size_bytes)}</span>{' '}
                        <code class="sha" title={f.sha256}>
                          sha256 {f.sha256.slice(0, 16)}…
                        </code>
                      </li>
                    ))}
                  </ul>
                </td>
                <td>
                  {c.kind !== 'latest' ? (
                    <div class="stack">
                      <button
                        type="button"
                        class="small-button"
                        onClick={() =>
                          run(() =>
                            downloadFile(
                              `/v1/checkpoints/${c.id}/export`,
                              `student-${shortId(c.run_id)}-${c.kind}.safetensors`,
                            ),
                          )
                        }
                      >
                        Export student
                      </button>
                      <button
                        type="button"
                        class="small-button ghost"
                        onClick={() =>
                          run(async () => {
                            const body = await get<unknown>(`/v1/checkpoints/${c.id}/model-card`);
                            setCard({ id: c.id, text: JSON.stringify(body, null, 2) });
                          })
                        }
                      >
                        Model card
                      </button>
                    </div>
                  ) : (
                    <span class="muted small">resume point</span>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {card && (
        <details open class="model-card">
          <summary>Model card of checkpoint {shortId(card.id)}</summary>
          <pre tabIndex={0}>{card.text}</pre>
        </details>
      )}
      <p class="muted small">
        Checkpoints kept: the latest few, the best and the final. Total{' '}
        {bytes(list.reduce((n, c) => n + c.size_bytes, 0))}. Last one written{' '}
        {duration((Date.now() - new Date(list[0].created_at).getTime()) / 1000)} ago.
      </p>
    </>
  );
}

function downloadLabel(c: Checkpoint, file: string): string {
  return `Download ${file} of the ${c.kind} checkpoint at step ${c.step}`;
}

/** Trainer logs may carry terminal colour codes; a web page shows the text without them. */
function stripAnsi(line: string): string {
  // eslint-disable-next-line no-control-regex
  return line.replace(/\u001b\[[0-9;]*[A-Za-z]/g, '');
}
