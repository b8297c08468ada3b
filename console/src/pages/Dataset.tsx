// One dataset: status (with the ingestion error when it failed), statistics with a per-class
// bar chart, and a grid of sample images fetched with the token.

import { useEffect, useState } from 'preact/hooks';
import { api, fetchBlob } from '../api';
import { ClassBars, ErrorBox, Section, StatusBadge, usePoll } from '../components/common';
import { bytes, num, shortId, when } from '../format';
import { navigate } from '../router';
import type { Dataset, Sample } from '../types';

const HISTOGRAM_KEYS = [
  'class_counts',
  'per_class',
  'per_class_counts',
  'histogram',
  'class_histogram',
];

/** The per-class counts in a dataset's statistics, whatever the field is called. */
function classCounts(stats: Record<string, unknown>): number[] | null {
  for (const key of HISTOGRAM_KEYS) {
    const v = stats[key];
    if (Array.isArray(v) && v.every((x) => typeof x === 'number')) return v as number[];
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      const values = Object.values(v as Record<string, unknown>);
      if (values.every((x) => typeof x === 'number')) return values as number[];
    }
  }
  return null;
}

function classNames(stats: Record<string, unknown>): string[] | undefined {
  for (const key of ['class_names', 'classes']) {
    const v = stats[key];
    if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
  }
  return undefined;
}

/** The dataset page. */
export function DatasetPage({ id }: { id: string }) {
  const dataset = usePoll(() => api.dataset(id), 3000, [id]);
  const [actionError, setActionError] = useState<unknown>(null);
  const d = dataset.data;

  const act = async (what: 'ingest' | 'delete') => {
    setActionError(null);
    try {
      if (what === 'ingest') {
        await api.ingestDataset(id);
        await dataset.reload();
      } else if (confirm(`Delete dataset ${d?.name ?? id}?`)) {
        await api.deleteDataset(id);
        navigate('/datasets');
      }
    } catch (err) {
      setActionError(err);
    }
  };

  return (
    <div class="page">
      <div class="page-header">
        <div>
          <p class="crumbs">
            <a href="#/datasets">Datasets</a> /
          </p>
          <h1>
            {d?.name ?? shortId(id)} {d && <StatusBadge status={d.status} />}
          </h1>
          <p class="muted mono small">{id}</p>
        </div>
        <div class="actions">
          <button type="button" disabled={!d} onClick={() => act('ingest')}>
            Ingest again
          </button>
          <button type="button" class="danger" disabled={!d} onClick={() => act('delete')}>
            Delete
          </button>
        </div>
      </div>
      <ErrorBox error={dataset.error ?? actionError} />
      {d?.status === 'failed' && (
        <div class="error-box" role="alert" data-testid="ingest-error">
          <strong>Ingestion failed.</strong> {d.failure_reason ?? 'No reason was recorded.'}
          <p class="small">
            Check the format and the files, upload the wrong part again (it replaces the old one),
            then press “Ingest again”.
          </p>
        </div>
      )}
      {d && (d.status === 'ingesting' || d.status === 'uploaded') && (
        <p class="notice" role="status">
          Ingesting: validating the files and converting them for the trainer…
        </p>
      )}
      {d && <Overview dataset={d} />}
      {d?.status === 'ready' && d.stats && <Statistics stats={d.stats} />}
      {d?.status === 'ready' && (
        <Samples id={id} names={d.stats ? classNames(d.stats) : undefined} />
      )}
    </div>
  );
}

function Overview({ dataset: d }: { dataset: Dataset }) {
  return (
    <Section title="Overview">
      <dl class="facts">
        <div>
          <dt>Kind</dt>
          <dd>{d.kind}</dd>
        </div>
        <div>
          <dt>Format</dt>
          <dd>{d.format}</dd>
        </div>
        <div>
          <dt>Created</dt>
          <dd>{when(d.created_at)}</dd>
        </div>
      </dl>
      <table>
        <thead>
          <tr>
            <th scope="col">Part</th>
            <th scope="col">Size</th>
            <th scope="col">sha256</th>
          </tr>
        </thead>
        <tbody>
          {(d.parts ?? []).map((p) => (
            <tr key={p.part}>
              <td>{p.part}</td>
              <td class="num">{bytes(p.size_bytes)}</td>
              <td class="mono small">{p.sha256}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </Section>
  );
}

function Statistics({ stats }: { stats: Record<string, unknown> }) {
  const counts = classCounts(stats);
  const scalars = Object.entries(stats).filter(
    ([k, v]) =>
      !HISTOGRAM_KEYS.includes(k) &&
      (typeof v !== 'object' || v === null || (Array.isArray(v) && v.length > 0 && v.length <= 8)),
  );
  return (
    <Section title="Statistics">
      <dl class="facts">
        {scalars.map(([k, v]) => (
          <div key={k}>
            <dt>{k.replace(/_/g, ' ')}</dt>
            <dd>{Array.isArray(v) ? v.map(num).join(' × ') : num(v)}</dd>
          </div>
        ))}
      </dl>
      {counts && <ClassBars counts={counts} names={classNames(stats)} />}
    </Section>
  );
}

function Samples({ id, names }: { id: string; names?: string[] }) {
  const [samples, setSamples] = useState<(Sample & { url: string })[]>([]);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    let cancelled = false;
    const urls: string[] = [];
    (async () => {
      try {
        const list = await api.samples(id, 32);
        const loaded = await Promise.all(
          list.map(async (s) => {
            const url = URL.createObjectURL(
              await fetchBlob(`/v1/datasets/${id}/samples/${s.index}`),
            );
            urls.push(url);
            return { ...s, url };
          }),
        );
        if (!cancelled) setSamples(loaded);
      } catch (err) {
        if (!cancelled) setError(err);
      }
    })();
    return () => {
      cancelled = true;
      urls.forEach((u) => URL.revokeObjectURL(u));
    };
  }, [id]);
  return (
    <Section title="Samples">
      <ErrorBox error={error} />
      <ul class="samples">
        {samples.map((s) => {
          const label = s.label === null ? 'unlabeled' : (names?.[s.label] ?? `class ${s.label}`);
          return (
            <li key={s.index}>
              <img src={s.url} alt={`Sample ${s.index}, ${label}`} width={64} height={64} />
              <span class="small">
                #{s.index} · {label}
              </span>
            </li>
          );
        })}
      </ul>
    </Section>
  );
}
