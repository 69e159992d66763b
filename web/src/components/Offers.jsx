// The offers of every configured provider (GET /api/v1/instances/offers) with filters; "Deploy" on a
// row hands the offer to the deploy wizard (onDeploy).
import { useId, useRef, useState } from 'react';
import { money, pct } from '../format.js';
import { useLoad } from '../useLoad.js';
import { ErrorBox, Loading, ProviderErrors } from './ui.jsx';

// Filters the API takes; min_reliability is applied here (the offers route has no such parameter).
export const EMPTY_FILTERS = { gpu: '', num_gpus: '', min_vram: '', max_price: '', region: '', provider: '', sort: 'price', min_reliability: '' };
const API_FILTERS = ['gpu', 'num_gpus', 'min_vram', 'max_price', 'region', 'provider', 'sort'];

// The offers URL for these filters: empty fields are left out, values trimmed and encoded.
export function offersPath(filters) {
  const q = new URLSearchParams();
  for (const k of API_FILTERS) {
    const v = String(filters[k] ?? '').trim();
    if (v !== '') q.set(k, v);
  }
  const s = q.toString();
  return '/api/v1/instances/offers' + (s ? '?' + s : '');
}

// Offers at or above a reliability given in percent ('' = all).
export function filterReliability(offers, minPct) {
  const m = String(minPct ?? '').trim();
  if (m === '' || !Number.isFinite(Number(m))) return offers;
  return offers.filter((o) => o.reliability != null && o.reliability * 100 >= Number(m) - 1e-9);
}

function validate(f) {
  const num = (k, label, { int = false, max } = {}) => {
    const v = String(f[k] ?? '').trim();
    if (v === '') return null;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0 || (int && !Number.isInteger(n)) || (max != null && n > max)) {
      return { field: k, message: `${label} must be ${int ? 'a whole number' : 'a number'}${max != null ? ` from 0 to ${max}` : ' of 0 or more'}.` };
    }
    return null;
  };
  return (
    num('num_gpus', 'GPUs', { int: true }) ||
    num('min_vram', 'Min VRAM') ||
    num('max_price', 'Max price') ||
    num('min_reliability', 'Min reliability', { max: 100 })
  );
}

export function Offers({ api, canMutate, onDeploy, onProviders }) {
  const id = useId();
  const [form, setForm] = useState(EMPTY_FILTERS);
  const [applied, setApplied] = useState(EMPTY_FILTERS);
  const [invalid, setInvalid] = useState(null);
  const providers = useRef(new Set(['local']));
  const path = offersPath(applied);
  const data = useLoad(
    () =>
      api.get(path).then((r) => {
        for (const o of r.offers || []) {
          providers.current.add(o.provider);
          if (onProviders) onProviders(o.provider);
        }
        return r;
      }),
    path,
  );

  const set = (k) => (e) => setForm((f) => ({ ...f, [k]: e.target.value }));
  const search = (e) => {
    e.preventDefault();
    const bad = validate(form);
    setInvalid(bad);
    if (bad) return;
    if (offersPath(form) === path) data.reload();
    setApplied(form);
  };
  const reset = () => {
    setInvalid(null);
    setForm(EMPTY_FILTERS);
    setApplied(EMPTY_FILTERS);
  };

  const d = data.data;
  const all = d ? d.offers || [] : [];
  const offers = filterReliability(all, applied.min_reliability);
  const errId = `${id}-err`;
  const field = (k, label, props = {}) => (
    <div className="field">
      <label htmlFor={`${id}-${k}`}>{label}</label>
      <input
        id={`${id}-${k}`}
        value={form[k]}
        onChange={set(k)}
        aria-invalid={(invalid && invalid.field === k) || undefined}
        aria-describedby={invalid && invalid.field === k ? errId : undefined}
        {...props}
      />
    </div>
  );
  return (
    <div className="card" role="region" aria-labelledby={`${id}-h`}>
      <h2 id={`${id}-h`}>Offers</h2>
      <form onSubmit={search} noValidate aria-label="Filter offers">
        <div className="form-grid">
          {field('gpu', 'GPU', { placeholder: 'e.g. 4090' })}
          {field('num_gpus', 'GPUs, at least', { type: 'number', min: '1', step: '1', inputMode: 'numeric' })}
          {field('min_vram', 'Min VRAM (GB)', { type: 'number', min: '0', step: 'any', inputMode: 'decimal' })}
          {field('max_price', 'Max price ($/h)', { type: 'number', min: '0', step: 'any', inputMode: 'decimal' })}
          {field('region', 'Region', { placeholder: 'e.g. US' })}
          <div className="field">
            <label htmlFor={`${id}-provider`}>Provider</label>
            <select id={`${id}-provider`} value={form.provider} onChange={set('provider')}>
              <option value="">any</option>
              {[...providers.current].sort().map((p) => (
                <option key={p} value={p}>
                  {p}
                </option>
              ))}
            </select>
          </div>
          {field('min_reliability', 'Min reliability (%)', { type: 'number', min: '0', max: '100', step: 'any', inputMode: 'decimal' })}
          <div className="field">
            <label htmlFor={`${id}-sort`}>Sort by</label>
            <select id={`${id}-sort`} value={form.sort} onChange={set('sort')}>
              <option value="price">price</option>
              <option value="reliability">reliability</option>
              <option value="value">value (reliability per $)</option>
            </select>
          </div>
        </div>
        {invalid ? (
          <div id={errId} className="error" role="alert">
            {invalid.message}
          </div>
        ) : null}
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
      <ProviderErrors errors={d && d.provider_errors} />
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
                  {canMutate ? (
                    <th scope="col">
                      <span className="sr-only">Actions</span>
                    </th>
                  ) : null}
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
                            onClick={() => onDeploy && onDeploy(o)}
                            disabled={o.blacklisted}
                            title={o.blacklisted ? 'This host is blacklisted' : undefined}
                            aria-label={`Deploy ${o.provider} ${o.id}`}
                          >
                            Deploy…
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
          {offers.length} offer(s)
          {offers.length !== all.length ? ` (${all.length - offers.length} below the reliability filter)` : ''}
        </p>
      ) : null}
    </div>
  );
}
