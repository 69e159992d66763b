// The market: offers of every configured provider (filter, sort, deploy one) and our own machine
// history (per-provider success, reliable and problematic hosts, the shared blacklist).
import { useId, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { useRouter } from '../router.jsx';
import { ErrorBox, Loading } from '../components/ui.jsx';
import { dateTime, duration, money } from '../format.js';
import { useLoad } from '../useLoad.js';

export const EMPTY_FILTERS = { gpu: '', num_gpus: '', min_vram: '', max_price: '', region: '', provider: '', sort: 'price' };

// The offers URL for these filters: empty fields are left out, values trimmed and encoded.
export function offersPath(filters) {
  const q = new URLSearchParams();
  for (const k of Object.keys(EMPTY_FILTERS)) {
    const v = String(filters[k] ?? '').trim();
    if (v !== '') q.set(k, v);
  }
  const s = q.toString();
  return '/api/v1/instances/offers' + (s ? '?' + s : '');
}

const pct = (x) => (x == null || !isFinite(x) ? '—' : `${Math.round(x * 100)} %`);

// A machine name for a deploy: "<gpu>-<offer id>" in lower case, letters, digits and dashes only.
export function deployName(offer) {
  const base = `${offer.gpu_name || offer.provider}-${offer.id}`
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  return (base || 'machine').slice(0, 48);
}

export function MarketPage() {
  const { api, canMutate, user } = useAuth();
  const isAdmin = !!user && user.role === 'admin';
  return (
    <section aria-labelledby="market-title">
      <div className="page-head">
        <h1 id="market-title">Market</h1>
      </div>
      <Offers api={api} canMutate={canMutate} />
      <MachineHistory api={api} isAdmin={isAdmin} />
    </section>
  );
}

function Offers({ api, canMutate }) {
  const id = useId();
  const { navigate } = useRouter();
  const [form, setForm] = useState(EMPTY_FILTERS);
  const [path, setPath] = useState(() => offersPath(EMPTY_FILTERS));
  const [deploying, setDeploying] = useState(null);
  const [deployError, setDeployError] = useState(null);
  const data = useLoad(() => api.get(path), path);

  const set = (k) => (e) => setForm((f) => ({ ...f, [k]: e.target.value }));
  const search = (e) => {
    e.preventDefault();
    const p = offersPath(form);
    if (p === path) data.reload();
    else setPath(p);
  };
  const reset = () => {
    setForm(EMPTY_FILTERS);
    setPath(offersPath(EMPTY_FILTERS));
  };
  const deploy = async (o) => {
    setDeploying(`${o.provider}/${o.id}`);
    setDeployError(null);
    try {
      await api.post('/api/v1/instances', { name: deployName(o), provider: o.provider, offer_id: o.id });
      navigate('/');
    } catch (err) {
      setDeployError(err);
      setDeploying(null);
    }
  };

  const d = data.data;
  const offers = d ? d.offers || [] : [];
  const field = (k, label, props = {}) => (
    <div className="field">
      <label htmlFor={`${id}-${k}`}>{label}</label>
      <input id={`${id}-${k}`} value={form[k]} onChange={set(k)} {...props} />
    </div>
  );
  return (
    <div className="card">
      <h2>Offers</h2>
      <form onSubmit={search} noValidate aria-label="Filter offers">
        <div className="form-grid">
          {field('gpu', 'GPU', { placeholder: 'e.g. 4090' })}
          {field('num_gpus', 'GPUs, at least', { type: 'number', min: '1', step: '1', inputMode: 'numeric' })}
          {field('min_vram', 'Min VRAM (GB)', { type: 'number', min: '0', step: 'any' })}
          {field('max_price', 'Max price ($/h)', { type: 'number', min: '0', step: 'any' })}
          {field('region', 'Region')}
          {field('provider', 'Provider', { placeholder: 'any' })}
          <div className="field">
            <label htmlFor={`${id}-sort`}>Sort by</label>
            <select id={`${id}-sort`} value={form.sort} onChange={set('sort')}>
              <option value="price">price</option>
              <option value="reliability">reliability</option>
              <option value="value">value (reliability per $)</option>
            </select>
          </div>
        </div>
        <div className="actions">
          <button type="submit" className="primary" disabled={data.loading}>
            {data.loading ? 'Searching…' : 'Search'}
          </button>
          <button type="button" onClick={reset} disabled={data.loading}>
            Reset
          </button>
        </div>
      </form>
      {data.loading && !d ? <Loading label="Loading offers…" /> : null}
      <ErrorBox error={data.error} title="Cannot load offers" onRetry={data.reload} />
      <ErrorBox error={deployError} title="Cannot deploy" />
      {d && d.provider_errors && d.provider_errors.length ? (
        <div className="error" role="status" data-testid="provider-errors">
          <strong>Some providers did not answer: </strong>
          {d.provider_errors.map((e) => `${e.provider}: ${e.error || e.message || 'error'}`).join('; ')}
        </div>
      ) : null}
      {d ? (
        offers.length ? (
          <div className="table-wrap">
            <table aria-label="Offers" aria-busy={data.loading || undefined}>
              <thead>
                <tr>
                  <th scope="col">Provider</th>
                  <th scope="col">Offer</th>
                  <th scope="col">GPU</th>
                  <th scope="col">VRAM</th>
                  <th scope="col">CPU / RAM</th>
                  <th scope="col">Price</th>
                  <th scope="col">Reliability</th>
                  <th scope="col">Our history</th>
                  <th scope="col">Location</th>
                  {canMutate ? <th scope="col"><span className="sr-only">Actions</span></th> : null}
                </tr>
              </thead>
              <tbody>
                {offers.map((o) => {
                  const key = `${o.provider}/${o.id}`;
                  return (
                    <tr key={key} data-testid="offer-row" data-provider={o.provider} data-offer-id={o.id}>
                      <td>{o.provider}</td>
                      <td>
                        <code>{o.id}</code>{' '}
                        {o.blacklisted ? (
                          <span className="badge badge-bad" data-testid="blacklisted">
                            blacklisted
                          </span>
                        ) : null}
                      </td>
                      <td>
                        {o.num_gpus > 1 ? `${o.num_gpus}× ` : ''}
                        {o.gpu_name || '—'}
                      </td>
                      <td>{o.gpu_ram_gb != null ? `${o.gpu_ram_gb} GB` : '—'}</td>
                      <td>
                        {o.cpu_cores ?? '—'} cores / {o.ram_gb != null ? `${o.ram_gb} GB` : '—'}
                      </td>
                      <td>{money(o.price_per_hour, 3)}/h</td>
                      <td>{pct(o.reliability)}</td>
                      <td>
                        {o.history ? (
                          <span title={`${o.history.attempts} attempt(s)`}>
                            {pct(o.history.success_rate)} of {o.history.attempts}
                          </span>
                        ) : (
                          <span className="muted">none</span>
                        )}
                      </td>
                      <td>{o.location || '—'}</td>
                      {canMutate ? (
                        <td>
                          <button
                            type="button"
                            onClick={() => deploy(o)}
                            disabled={deploying !== null || o.blacklisted}
                            title={o.blacklisted ? 'This host is blacklisted' : undefined}
                            aria-label={`Deploy ${o.provider} ${o.id}`}
                          >
                            {deploying === key ? 'Deploying…' : 'Deploy'}
                          </button>
                        </td>
                      ) : null}
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        ) : (
          <p className="muted empty">No offer matches these filters.</p>
        )
      ) : null}
      {d ? (
        <p className="muted small" data-testid="offer-count">
          {d.count ?? offers.length} offer(s)
        </p>
      ) : null}
    </div>
  );
}

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

function MachineHistory({ api, isAdmin }) {
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
