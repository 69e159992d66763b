// Our own machine history (per-provider success, reliable and problematic hosts) and the shared
// blacklist (admins edit it: POST/DELETE /machines/history/blacklist/{provider}/{machine_id}).
import { useId, useState } from 'react';
import { dateTime, duration, pct } from '../format.js';
import { useLoad } from '../useLoad.js';
import { ErrorBox, Loading } from './ui.jsx';

// Reliability rows: per host (provider + machine_id), or per provider when byProvider is set.
function HostTable({ machines, label, empty, byProvider = false }) {
  if (!machines.length) return <p className="muted">{empty}</p>;
  return (
    <div className="table-wrap">
      <table aria-label={label}>
        <thead>
          <tr>
            <th scope="col">Provider</th>
            {byProvider ? null : <th scope="col">Machine</th>}
            <th scope="col">Attempts</th>
            <th scope="col">Ready</th>
            <th scope="col">Failed</th>
            <th scope="col">Success</th>
            <th scope="col">Avg. time to ready</th>
          </tr>
        </thead>
        <tbody>
          {machines.map((m) => (
            <tr key={`${m.provider}/${m.machine_id || ''}`}>
              <td>{m.provider}</td>
              {byProvider ? null : (
                <td>
                  <code>{m.machine_id}</code>
                </td>
              )}
              <td>{m.attempts}</td>
              <td>{m.ready}</td>
              <td>{m.failed}</td>
              <td>{pct(m.success_rate)}</td>
              <td>{m.ready ? duration(m.avg_time_to_ready_s) : '—'}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function MachineHistory({ api, isAdmin }) {
  const data = useLoad(async () => {
    const [summary, problematic, reliable, blacklist] = await Promise.all([
      api.get('/api/v1/machines/history/summary'),
      api.get('/api/v1/machines/history/problematic'),
      api.get('/api/v1/machines/history/reliable'),
      api.get('/api/v1/machines/history/blacklist'),
    ]);
    return {
      summary,
      problematic: problematic.machines || [],
      reliable: reliable.machines || [],
      blacklist: blacklist.blacklist || [],
    };
  }, 'history');
  const d = data.data;
  const providers = d ? Object.entries(d.summary.providers || {}) : [];
  return (
    <>
      <div className="card">
        <div className="page-head">
          <h2>Machine history</h2>
          <button type="button" onClick={data.reload} disabled={data.loading}>
            {data.loading ? 'Refreshing…' : 'Refresh'}
          </button>
        </div>
        {data.loading && !d ? <Loading label="Loading machine history…" /> : null}
        <ErrorBox error={data.error} title="Cannot load machine history" onRetry={data.reload} />
        {d ? (
          <>
            <p className="muted" data-testid="history-totals">
              {d.summary.attempts} provisioning attempt(s), {d.summary.blacklisted} blacklisted host(s).
            </p>
            <HostTable
              machines={providers.map(([name, p]) => ({ provider: name, ...p }))}
              label="Attempts per provider"
              empty="No provisioning attempts yet."
              byProvider
            />
            <h3>Reliable hosts</h3>
            <HostTable machines={d.reliable} label="Reliable hosts" empty="No host has 3+ attempts at 80 % success yet." />
            <h3>Problematic hosts</h3>
            <HostTable machines={d.problematic} label="Problematic hosts" empty="No problematic host." />
          </>
        ) : null}
      </div>
      {d ? <Blacklist api={api} isAdmin={isAdmin} entries={d.blacklist} onChanged={data.reload} /> : null}
    </>
  );
}

function Blacklist({ api, isAdmin, entries, onChanged }) {
  const id = useId();
  const [provider, setProvider] = useState('');
  const [machine, setMachine] = useState('');
  const [reason, setReason] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const url = (p, m) => `/api/v1/machines/history/blacklist/${encodeURIComponent(p)}/${encodeURIComponent(m)}`;

  const add = async (e) => {
    e.preventDefault();
    setError(null);
    if (!provider.trim() || !machine.trim()) return setError({ message: 'Give the provider and the machine id.' });
    setBusy(true);
    try {
      await api.post(url(provider.trim(), machine.trim()), { reason: reason.trim() || 'manual' });
      setMachine('');
      setReason('');
      await onChanged();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const remove = async (b) => {
    setError(null);
    setBusy(true);
    try {
      await api.del(url(b.provider, b.machine_id));
      await onChanged();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div className="card">
      <h2>Blacklist</h2>
      <p className="muted small">Deploys skip blacklisted hosts. The list is shared by all users{isAdmin ? '' : '; admins edit it'}.</p>
      {entries.length ? (
        <div className="table-wrap">
          <table aria-label="Blacklist">
            <thead>
              <tr>
                <th scope="col">Provider</th>
                <th scope="col">Machine</th>
                <th scope="col">Reason</th>
                <th scope="col">Added</th>
                {isAdmin ? <th scope="col"><span className="sr-only">Actions</span></th> : null}
              </tr>
            </thead>
            <tbody>
              {entries.map((b) => (
                <tr key={`${b.provider}/${b.machine_id}`} data-testid="blacklist-row">
                  <td>{b.provider}</td>
                  <td>
                    <code>{b.machine_id}</code>
                  </td>
                  <td>
                    {b.reason} {b.automatic ? <span className="badge badge-off">automatic</span> : null}
                  </td>
                  <td>{dateTime(b.created_at)}</td>
                  {isAdmin ? (
                    <td>
                      <button type="button" onClick={() => remove(b)} disabled={busy} aria-label={`Remove ${b.provider} ${b.machine_id} from the blacklist`}>
                        Remove
                      </button>
                    </td>
                  ) : null}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : (
        <p className="muted">No blacklisted host.</p>
      )}
      {isAdmin ? (
        <form className="inline-form" onSubmit={add} noValidate aria-label="Blacklist a host">
          <div className="field">
            <label htmlFor={`${id}-p`}>Provider</label>
            <input id={`${id}-p`} value={provider} onChange={(e) => setProvider(e.target.value)} />
          </div>
          <div className="field">
            <label htmlFor={`${id}-m`}>Machine id</label>
            <input id={`${id}-m`} value={machine} onChange={(e) => setMachine(e.target.value)} />
          </div>
          <div className="field">
            <label htmlFor={`${id}-r`}>Reason</label>
            <input id={`${id}-r`} value={reason} onChange={(e) => setReason(e.target.value)} placeholder="manual" />
          </div>
          <button type="submit" disabled={busy}>
            Add to blacklist
          </button>
        </form>
      ) : null}
      <ErrorBox error={error} title="Cannot change the blacklist" />
    </div>
  );
}
