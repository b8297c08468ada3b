// Compare runs: one chosen metric overlaid for every picked run, and their specs side by side
// as dotted keys with the differing values highlighted.

import { useEffect, useMemo, useState } from 'preact/hooks';
import { api } from '../api';
import { Chart, type ChartSeries } from '../components/Chart';
import { ErrorBox, Section, StatusBadge, usePoll } from '../components/common';
import { accuracy, flatten, percent, shortId } from '../format';
import type { Run } from '../types';

const PREFERRED_METRICS = ['eval/student/top1', 'student/loss', 'teacher/loss'];

function label(run: Run): string {
  return run.name ? `${run.name} (${shortId(run.id)})` : shortId(run.id);
}

/** The compare page for the given run ids. */
export function ComparePage({ ids }: { ids: string[] }) {
  const key = ids.join(',');
  const runs = usePoll(() => Promise.all(ids.map((id) => api.run(id))), 0, [key]);
  const names = usePoll(
    async () => {
      const lists = await Promise.all(ids.map((id) => api.metricNames(id)));
      return [...new Set(lists.flatMap((l) => l.names))].sort();
    },
    10000,
    [key],
  );
  const [metric, setMetric] = useState<string>('');
  const [series, setSeries] = useState<ChartSeries[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [onlyDiffs, setOnlyDiffs] = useState(false);

  const available = names.data ?? [];
  useEffect(() => {
    if (metric || available.length === 0) return;
    setMetric(PREFERRED_METRICS.find((m) => available.includes(m)) ?? available[0]);
  }, [available.join(','), metric]);

  useEffect(() => {
    if (!metric || !runs.data) return;
    let cancelled = false;
    const points = Math.max(200, Math.min(2000, Math.round(window.innerWidth * 0.9)));
    Promise.all(
      runs.data.map(async (run) => {
        const { series: found } = await api.metrics(run.id, [metric], points);
        const s = found.find((x) => x.name === metric);
        return { name: label(run), points: s ? s.points : [] } as ChartSeries;
      }),
    )
      .then((loaded) => {
        if (!cancelled) {
          setSeries(loaded);
          setError(null);
        }
      })
      .catch((err) => !cancelled && setError(err));
    return () => {
      cancelled = true;
    };
  }, [metric, runs.data]);

  const table = useMemo(() => {
    const flat = (runs.data ?? []).map((r) => flatten(r.spec));
    const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
    return keys.map((k) => {
      const values = flat.map((f) => (k in f ? JSON.stringify(f[k]) : '(default)'));
      return { key: k, values, differs: new Set(values).size > 1 };
    });
  }, [runs.data]);

  if (ids.length === 0) {
    return (
      <div class="page">
        <h1>Compare runs</h1>
        <p>
          Pick two or more runs in the <a href="#/runs">runs table</a> and press Compare.
        </p>
      </div>
    );
  }

  const diffCount = table.filter((row) => row.differs).length;
  return (
    <div class="page">
      <div class="page-header">
        <div>
          <p class="crumbs">
            <a href="#/runs">Runs</a> /
          </p>
          <h1>Compare {ids.length} runs</h1>
        </div>
      </div>
      <ErrorBox error={runs.error ?? names.error ?? error} />

      <Section title="Runs">
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Run</th>
                <th scope="col">Status</th>
                <th scope="col">Algorithm</th>
                <th scope="col">Best acc.</th>
                <th scope="col">Final acc.</th>
              </tr>
            </thead>
            <tbody>
              {(runs.data ?? []).map((r) => (
                <tr key={r.id}>
                  <td>
                    <a href={`#/runs/${r.id}`}>{label(r)}</a>
                  </td>
                  <td>
                    <StatusBadge status={r.status} />
                  </td>
                  <td>{r.algorithm}</td>
                  <td class="num">{percent(accuracy(r.best_metrics))}</td>
                  <td class="num">{percent(accuracy(r.final_metrics))}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </Section>

      <Section
        title="Metric"
        actions={
          <label>
            Metric{' '}
            <select
              id="compare-metric"
              value={metric}
              onChange={(e) => setMetric((e.target as HTMLSelectElement).value)}
            >
              {available.map((n) => (
                <option key={n} value={n}>
                  {n}
                </option>
              ))}
            </select>
          </label>
        }
      >
        <Chart title={metric || 'No metrics yet'} series={series} height={320} />
      </Section>

      <Section
        title="Specs"
        actions={
          <label class="inline">
            <input
              type="checkbox"
              checked={onlyDiffs}
              onChange={(e) => setOnlyDiffs((e.target as HTMLInputElement).checked)}
            />
            Only differences ({diffCount})
          </label>
        }
      >
        <div class="table-wrap">
          <table class="spec-diff">
            <caption class="sr-only">
              Spec fields by dotted key; rows whose values differ are highlighted
            </caption>
            <thead>
              <tr>
                <th scope="col">Field</th>
                {(runs.data ?? []).map((r) => (
                  <th scope="col" key={r.id}>
                    {label(r)}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {table
                .filter((row) => !onlyDiffs || row.differs)
                .map((row) => (
                  <tr key={row.key} class={row.differs ? 'differs' : undefined}>
                    <th scope="row" class="mono">
                      {row.key}
                      {row.differs && <span class="sr-only"> (differs)</span>}
                    </th>
                    {row.values.map((v, i) => (
                      <td key={i} class="mono">
                        {v}
                      </td>
                    ))}
                  </tr>
                ))}
            </tbody>
          </table>
        </div>
      </Section>
    </div>
  );
}
