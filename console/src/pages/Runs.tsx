// The runs table: every run across experiments, filtered on the server (status, algorithm,
// experiment, text), sorted here, refreshed every few seconds. Checkboxes pick runs to compare.

import { useMemo, useState } from 'preact/hooks';
import { api, items } from '../api';
import { ErrorBox, ProgressBar, StatusBadge, usePoll } from '../components/common';
import { accuracy, labeledDataset, percent, shortId, when } from '../format';
import { navigate } from '../router';
import type { Run } from '../types';

const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const ALGORITHMS = ['mpl', 'uda', 'supervised'];
const POLL_MS = 3000;

type SortKey = 'created' | 'status' | 'algorithm' | 'progress' | 'best' | 'final' | 'name';

const SORTERS: Record<SortKey, (r: Run) => string | number> = {
  created: (r) => r.created_at,
  status: (r) => r.status,
  algorithm: (r) => r.algorithm,
  progress: (r) => r.progress?.fraction ?? 0,
  best: (r) => accuracy(r.best_metrics) ?? -1,
  final: (r) => accuracy(r.final_metrics) ?? -1,
  name: (r) => r.name || r.id,
};

/** The runs list page. */
export function RunsPage() {
  const [status, setStatus] = useState('');
  const [algorithm, setAlgorithm] = useState('');
  const [experiment, setExperiment] = useState('');
  const [search, setSearch] = useState('');
  const [sort, setSort] = useState<{ key: SortKey; desc: boolean }>({ key: 'created', desc: true });
  const [picked, setPicked] = useState<Set<string>>(new Set());

  const runs = usePoll(
    () =>
      api.runs({
        status,
        algorithm,
        experiment_id: experiment,
        q: search.trim(),
        limit: 200,
      }),
    POLL_MS,
    [status, algorithm, experiment, search],
  );
  const experiments = usePoll(async () => items(await api.experiments()), 15000, []);
  const datasets = usePoll(async () => items(await api.datasets()), 15000, []);

  const experimentName = useMemo(() => {
    const map = new Map<string, string>();
    for (const e of experiments.data ?? []) map.set(e.id, e.name);
    return map;
  }, [experiments.data]);
  const datasetName = useMemo(() => {
    const map = new Map<string, string>();
    for (const d of datasets.data ?? []) map.set(d.id, d.name);
    return map;
  }, [datasets.data]);

  const rows = useMemo(() => {
    const list = [...(runs.data?.items ?? [])];
    const key = SORTERS[sort.key];
    list.sort((a, b) => {
      const x = key(a);
      const y = key(b);
      const order = x < y ? -1 : x > y ? 1 : 0;
      return sort.desc ? -order : order;
    });
    return list;
  }, [runs.data, sort]);

  const toggle = (id: string) => {
    const next = new Set(picked);
    if (next.has(id)) next.delete(id);
    else next.add(id);
    setPicked(next);
  };

  const header = (key: SortKey, label: string) => {
    const active = sort.key === key;
    return (
      <th scope="col" aria-sort={active ? (sort.desc ? 'descending' : 'ascending') : 'none'}>
        <button
          type="button"
          class="sort"
          onClick={() => setSort({ key, desc: active ? !sort.desc : true })}
        >
          {label}
          <span aria-hidden="true">{active ? (sort.desc ? ' ▾' : ' ▴') : ''}</span>
        </button>
      </th>
    );
  };

  return (
    <div class="page">
      <div class="page-header">
        <h1>Runs</h1>
        <div class="actions">
          <button
            type="button"
            disabled={picked.size < 2}
            onClick={() => navigate(`/compare?ids=${[...picked].join(',')}`)}
          >
            Compare ({picked.size})
          </button>
          <a class="button" href="#/new-run">
            New run
          </a>
        </div>
      </div>

      <form class="filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <label>
          Status
          <select value={status} onChange={(e) => setStatus((e.target as HTMLSelectElement).value)}>
            <option value="">any</option>
            {STATUSES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </label>
        <label>
          Algorithm
          <select
            value={algorithm}
            onChange={(e) => setAlgorithm((e.target as HTMLSelectElement).value)}
          >
            <option value="">any</option>
            {ALGORITHMS.map((a) => (
              <option key={a}>{a}</option>
            ))}
          </select>
        </label>
        <label>
          Experiment
          <select
            value={experiment}
            onChange={(e) => setExperiment((e.target as HTMLSelectElement).value)}
          >
            <option value="">any</option>
            {(experiments.data ?? []).map((e) => (
              <option key={e.id} value={e.id}>
                {e.name}
              </option>
            ))}
          </select>
        </label>
        <label class="grow">
          Search
          <input
            type="search"
            placeholder="name or id"
            value={search}
            onInput={(e) => setSearch((e.target as HTMLInputElement).value)}
          />
        </label>
      </form>

      <ErrorBox error={runs.error} />
      <div class="table-wrap">
        <table class="runs-table">
          <caption class="sr-only">Runs, newest first; refreshed every few seconds</caption>
          <thead>
            <tr>
              <th scope="col">
                <span class="sr-only">Pick to compare</span>
              </th>
              {header('name', 'Run')}
              {header('status', 'Status')}
              {header('algorithm', 'Algorithm')}
              <th scope="col">Experiment</th>
              <th scope="col">Dataset</th>
              {header('progress', 'Progress')}
              {header('best', 'Best acc.')}
              {header('final', 'Final acc.')}
              <th scope="col">Attempts</th>
              {header('created', 'Started')}
            </tr>
          </thead>
          <tbody>
            {rows.map((run) => {
              const dataset = labeledDataset(run.spec);
              return (
                <tr key={run.id} data-run-id={run.id} data-status={run.status}>
                  <td>
                    <input
                      type="checkbox"
                      checked={picked.has(run.id)}
                      onChange={() => toggle(run.id)}
                      aria-label={`Pick run ${run.name || shortId(run.id)} to compare`}
                    />
                  </td>
                  <td>
                    <a href={`#/runs/${run.id}`}>{run.name || shortId(run.id)}</a>
                    {run.name && <div class="muted small mono">{shortId(run.id)}</div>}
                  </td>
                  <td>
                    <StatusBadge status={run.status} />
                    {run.queue_position !== null && run.status === 'queued' && (
                      <div class="muted small">#{run.queue_position} in queue</div>
                    )}
                  </td>
                  <td>{run.algorithm}</td>
                  <td>
                    {run.experiment_id
                      ? (experimentName.get(run.experiment_id) ?? shortId(run.experiment_id))
                      : '–'}
                  </td>
                  <td>{dataset ? (datasetName.get(dataset) ?? shortId(dataset)) : '–'}</td>
                  <td>
                    <ProgressBar
                      fraction={run.progress?.fraction ?? 0}
                      eta={run.status === 'running' ? run.progress?.eta_secs : null}
                      label={`Progress of run ${run.name || shortId(run.id)}`}
                    />
                  </td>
                  <td class="num">{percent(accuracy(run.best_metrics))}</td>
                  <td class="num">{percent(accuracy(run.final_metrics))}</td>
                  <td class="num">
                    {run.attempt}/{run.max_attempts}
                  </td>
                  <td>{when(run.started_at ?? run.created_at)}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
        {runs.data?.next_cursor && (
          <p class="muted small">
            Showing the newest {rows.length} runs that match; narrow the filters to see older ones.
          </p>
        )}
        {runs.data && rows.length === 0 && (
          <p class="empty">
            No runs match. <a href="#/new-run">Start one</a>.
          </p>
        )}
      </div>
    </div>
  );
}
