// Workers and queue: the schedulers seen (slots, devices, heartbeats, what runs where) and the
// queued runs in the order they will be claimed.

import { api, items } from '../api';
import { ErrorBox, Section, StatusBadge, usePoll } from '../components/common';
import { duration, shortId, when } from '../format';

/** The workers and queue page. */
export function WorkersPage() {
  const workers = usePoll(() => api.workers(), 3000, []);
  const queue = usePoll(async () => items(await api.queue()), 3000, []);
  return (
    <div class="page">
      <div class="page-header">
        <h1>Workers &amp; queue</h1>
      </div>
      <Section title="Workers">
        <ErrorBox error={workers.error} />
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Worker</th>
                <th scope="col">State</th>
                <th scope="col">Slots</th>
                <th scope="col">Devices</th>
                <th scope="col">Last heartbeat</th>
                <th scope="col">Started</th>
                <th scope="col">Running</th>
              </tr>
            </thead>
            <tbody>
              {(workers.data ?? []).map((w) => (
                <tr key={w.id} class={w.alive ? undefined : 'dim'}>
                  <td>
                    {w.hostname}
                    <div class="muted small mono">{shortId(w.id)}</div>
                  </td>
                  <td>
                    <span class={`badge ${w.alive ? 'status-running' : 'status-cancelled'}`}>
                      {w.alive ? 'alive' : w.stopped_at ? 'stopped' : 'lost'}
                    </span>
                  </td>
                  <td class="num">
                    {w.running_runs.length}/{w.slots}
                  </td>
                  <td>{deviceList(w.devices)}</td>
                  <td>
                    {duration((Date.now() - new Date(w.last_heartbeat_at).getTime()) / 1000)} ago
                  </td>
                  <td>{when(w.started_at)}</td>
                  <td>
                    {w.running_runs.length === 0
                      ? '–'
                      : w.running_runs.map((id) => (
                          <a key={id} class="mono" href={`#/runs/${id}`}>
                            {shortId(id)}{' '}
                          </a>
                        ))}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {workers.data && workers.data.length === 0 && (
            <p class="empty">No scheduler has connected yet.</p>
          )}
        </div>
      </Section>
      <Section title="Queue">
        <ErrorBox error={queue.error} />
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Position</th>
                <th scope="col">Run</th>
                <th scope="col">Status</th>
                <th scope="col">Algorithm</th>
                <th scope="col">Priority</th>
                <th scope="col">Attempt</th>
                <th scope="col">Submitted</th>
              </tr>
            </thead>
            <tbody>
              {(queue.data ?? []).map((r, i) => (
                <tr key={r.id}>
                  <td class="num">{r.queue_position ?? i + 1}</td>
                  <td>
                    <a href={`#/runs/${r.id}`}>{r.name || shortId(r.id)}</a>
                  </td>
                  <td>
                    <StatusBadge status={r.status} />
                  </td>
                  <td>{r.algorithm}</td>
                  <td class="num">{r.priority}</td>
                  <td class="num">
                    {r.attempt}/{r.max_attempts}
                  </td>
                  <td>{when(r.created_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {queue.data && queue.data.length === 0 && <p class="empty">The queue is empty.</p>}
        </div>
      </Section>
    </div>
  );
}

/** Devices as the scheduler reported them: names, or objects shown as JSON. */
function deviceList(devices: unknown): string {
  if (!Array.isArray(devices) || devices.length === 0) return '–';
  return devices.map((d) => (typeof d === 'string' ? d : JSON.stringify(d))).join(', ');
}
