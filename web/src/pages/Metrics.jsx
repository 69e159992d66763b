// GPU market metrics: price history per GPU model and provider, the market now, spot against on demand,
// spot availability and reliability, GPUs for LLM work, then our machine history and the blacklist.
// Every section loads on its own (its own loading and error state).
import { useId, useMemo, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { BarChart, TimeLineChart } from '../components/Charts.jsx';
import { MachineHistory } from '../components/MachineHistory.jsx';
import { ErrorBox, Loading, ProviderErrors, Sparkline } from '../components/ui.jsx';
import { age, money, pct } from '../format.js';
import { useLoad } from '../useLoad.js';

const WINDOWS = [
  { hours: 6, label: '6 hours' },
  { hours: 24, label: '24 hours' },
  { hours: 48, label: '2 days' },
  { hours: 168, label: '7 days' },
  { hours: 720, label: '30 days' },
];
const PRICE_FIELDS = { avg_price: 'average', min_price: 'cheapest', spot_min_price: 'cheapest spot' };
const gpuHour = (v) => (v == null ? '—' : `${money(v, 3)}/GPU-h`);

export function marketPath({ gpu, provider, hours }) {
  const q = new URLSearchParams();
  if (gpu) q.set('gpu', gpu);
  if (provider) q.set('provider', provider);
  q.set('hours', String(hours));
  return `/api/v1/metrics/market?${q}`;
}

// The history response -> chart series of one price field.
export function priceSeries(history, field) {
  return (history.series || []).map((s) => ({
    label: `${s.gpu} · ${s.provider}`,
    points: s.points.filter((p) => p[field] != null).map((p) => ({ t: p.t, y: p[field] })),
  }));
}

function Section({ title, id, children, actions }) {
  return (
    <div className="card" role="region" aria-labelledby={id}>
      <div className="page-head">
        <h2 id={id}>{title}</h2>
        {actions}
      </div>
      {children}
    </div>
  );
}

function State({ load, label, empty }) {
  if (load.loading && !load.data) return <Loading label={`Loading ${label}…`} />;
  if (load.error) return <ErrorBox error={load.error} title={`Cannot load ${label}`} onRetry={load.reload} />;
  if (load.data && empty) return <p className="muted">{empty}</p>;
  return null;
}

export function MetricsPage() {
  const { api, user } = useAuth();
  const isAdmin = !!user && user.role === 'admin';
  const summary = useLoad(() => api.get('/api/v1/metrics/market/summary'), 'summary');
  const gpus = summary.data ? summary.data.gpus || [] : [];
  const [picked, setGpu] = useState(null); // the user's choice; until then the busiest model
  const busiest = summary.data ? ([...gpus].sort((a, b) => b.offers - a.offers)[0]?.gpu ?? '') : summary.error ? '' : null;
  const gpu = picked ?? busiest; // null while the summary loads

  return (
    <section aria-labelledby="metrics-title">
      <div className="page-head">
        <h1 id="metrics-title">GPU metrics</h1>
      </div>
      <PriceHistory api={api} gpus={gpus} gpu={gpu} setGpu={setGpu} />
      <MarketNow summary={summary} onChart={(g) => setGpu(g)} />
      <SpotVsOnDemand api={api} />
      <Availability api={api} />
      <Reliability api={api} />
      <LlmGpus api={api} />
      <MachineHistory api={api} isAdmin={isAdmin} />
    </section>
  );
}

function PriceHistory({ api, gpus, gpu, setGpu }) {
  const id = useId();
  const [provider, setProvider] = useState('');
  const [hours, setHours] = useState(48);
  const [field, setField] = useState('avg_price');
  const ready = gpu !== null;
  const path = marketPath({ gpu: gpu || '', provider, hours });
  const history = useLoad(() => api.get(path), path, !!ready);
  const providers = useMemo(() => [...new Set(gpus.flatMap((g) => (g.providers || []).map((p) => p.provider)))].sort(), [gpus]);
  const series = history.data ? priceSeries(history.data, field).filter((s) => s.points.length) : [];
  const points = series.reduce((n, s) => n + s.points.length, 0);
  return (
    <Section title="Price history" id={`${id}-h`}>
      <form className="form-grid filters" onSubmit={(e) => e.preventDefault()} aria-label="Price history filters">
        <div className="field">
          <label htmlFor={`${id}-gpu`}>GPU model</label>
          <select id={`${id}-gpu`} value={gpu || ''} onChange={(e) => setGpu(e.target.value)}>
            <option value="">every model</option>
            {gpus.map((g) => (
              <option key={g.gpu} value={g.gpu}>
                {g.gpu}
              </option>
            ))}
          </select>
        </div>
        <div className="field">
          <label htmlFor={`${id}-prov`}>Provider</label>
          <select id={`${id}-prov`} value={provider} onChange={(e) => setProvider(e.target.value)}>
            <option value="">every provider</option>
            {providers.map((p) => (
              <option key={p} value={p}>
                {p}
              </option>
            ))}
          </select>
        </div>
        <div className="field">
          <label htmlFor={`${id}-hours`}>Window</label>
          <select id={`${id}-hours`} value={hours} onChange={(e) => setHours(Number(e.target.value))}>
            {WINDOWS.map((w) => (
              <option key={w.hours} value={w.hours}>
                {w.label}
              </option>
            ))}
          </select>
        </div>
        <div className="field">
          <label htmlFor={`${id}-field`}>Price</label>
          <select id={`${id}-field`} value={field} onChange={(e) => setField(e.target.value)}>
            {Object.entries(PRICE_FIELDS).map(([k, v]) => (
              <option key={k} value={k}>
                {v}
              </option>
            ))}
          </select>
        </div>
      </form>
      {!ready || (history.loading && !history.data) ? <Loading label="Loading price history…" /> : null}
      <ErrorBox error={history.error} title="Cannot load price history" onRetry={history.reload} />
      {history.data ? (
        series.length ? (
          <>
            <TimeLineChart
              series={series}
              format={(v) => money(v, 2)}
              label={`${PRICE_FIELDS[field]} price per GPU-hour over the last ${hours} hours: ${series.length} series, ${points} samples`}
            />
            <p className="muted small" data-testid="history-points">
              {series.length} series, {points} samples{history.data.truncated ? ' (older samples cut)' : ''}. Dollars per GPU-hour.
            </p>
          </>
        ) : (
          <p className="muted">No market samples in this window{gpu ? ` for ${gpu}` : ''}. The market monitor samples every provider every few minutes.</p>
        )
      ) : null}
    </Section>
  );
}

function Change({ c }) {
  if (!c || c.avg_price_pct == null) return <span className="muted">—</span>;
  const up = c.avg_price_pct > 0;
  const flat = c.avg_price_pct === 0;
  return (
    <span className={flat ? '' : up ? 'bad-text' : 'ok-text'}>
      {flat ? '±0 %' : `${up ? '▲ +' : '▼ '}${c.avg_price_pct} %`}
    </span>
  );
}

function MarketNow({ summary, onChart }) {
  const id = useId();
  const gpus = summary.data ? summary.data.gpus || [] : [];
  return (
    <Section title="The market now" id={`${id}-h`}>
      <State load={summary} label="the market summary" empty={summary.data && !gpus.length ? 'No market data yet.' : null} />
      {gpus.length ? <p className="muted small">Each provider&apos;s newest sample; the newest was taken {newestSample(summary.data)}. Dollars per GPU-hour.</p> : null}
      {gpus.length ? (
        <div className="table-wrap">
          <table aria-label="Market now">
            <thead>
              <tr>
                <th scope="col">GPU</th>
                <th scope="col">VRAM</th>
                <th scope="col">Cheapest</th>
                <th scope="col">Average</th>
                <th scope="col">Highest</th>
                <th scope="col">Offers</th>
                <th scope="col">GPUs</th>
                <th scope="col">Reliability</th>
                <th scope="col">24 h</th>
                <th scope="col">Providers</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {gpus.map((g) => (
                <tr key={g.gpu} data-testid="market-row">
                  <th scope="row">{g.gpu}</th>
                  <td>{g.vram_gb ? `${Math.round(g.vram_gb)} GB` : '—'}</td>
                  <td>{gpuHour(g.min_price)}</td>
                  <td>{gpuHour(g.avg_price)}</td>
                  <td>{gpuHour(g.max_price)}</td>
                  <td>{g.offers}</td>
                  <td>{g.available_gpus}</td>
                  <td>{pct(g.avg_reliability)}</td>
                  <td>
                    <Change c={g.change_24h} />
                  </td>
                  <td>{(g.providers || []).map((p) => p.provider).join(', ')}</td>
                  <td>
                    <button type="button" onClick={() => onChart(g.gpu)} aria-label={`Chart ${g.gpu} prices`}>
                      Chart
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </Section>
  );
}

function SpotVsOnDemand({ api }) {
  const id = useId();
  const data = useLoad(async () => {
    const [monitor, savings] = await Promise.all([api.get('/api/v1/metrics/spot/monitor'), api.get('/api/v1/metrics/spot/savings')]);
    return { monitor: monitor.gpus || [], savings: savings.gpus || [], hoursPerMonth: savings.hours_per_month };
  }, 'spot');
  const d = data.data;
  const withSpot = d ? d.monitor.filter((g) => g.spot) : [];
  return (
    <Section title="Spot against on demand" id={`${id}-h`}>
      <State load={data} label="spot prices" empty={d && !d.monitor.length ? 'No market data yet.' : null} />
      {d && d.monitor.length ? (
        <>
          {withSpot.length ? (
            <BarChart
              labels={withSpot.map((g) => g.gpu)}
              bars={[
                { label: 'on demand', values: withSpot.map((g) => g.on_demand.price), color: '#1d4ed8' },
                { label: 'spot', values: withSpot.map((g) => g.spot.price), color: '#15803d' },
              ]}
              format={(v) => money(v, 2)}
              label={`Cheapest on-demand and spot price per GPU-hour for ${withSpot.length} GPU models`}
            />
          ) : (
            <p className="muted">No GPU model has a spot offer now.</p>
          )}
          <div className="table-wrap">
            <table aria-label="Spot against on demand">
              <thead>
                <tr>
                  <th scope="col">GPU</th>
                  <th scope="col">On demand</th>
                  <th scope="col">Spot</th>
                  <th scope="col">Spot discount</th>
                  <th scope="col">Saves per month</th>
                </tr>
              </thead>
              <tbody>
                {d.monitor.map((g) => {
                  const s = d.savings.find((x) => x.gpu === g.gpu);
                  return (
                    <tr key={g.gpu} data-testid="spot-row">
                      <th scope="row">{g.gpu}</th>
                      <td>
                        {gpuHour(g.on_demand?.price)} <span className="muted small">{g.on_demand?.provider}</span>
                      </td>
                      <td>
                        {g.spot ? (
                          <>
                            {gpuHour(g.spot.price)} <span className="muted small">{g.spot.provider}</span>
                          </>
                        ) : (
                          <span className="muted">no spot offer</span>
                        )}
                      </td>
                      <td>{g.spot_discount_pct != null ? `${g.spot_discount_pct} %` : '—'}</td>
                      <td>{s ? `${money(s.savings_per_month)} per GPU` : '—'}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
          <p className="muted small">Per GPU, running all month ({d.hoursPerMonth || 730} hours). Spot machines can be interrupted at any time.</p>
        </>
      ) : null}
    </Section>
  );
}

const TREND = { rising: '▲ rising', falling: '▼ falling', flat: '▬ flat' };

function Availability({ api }) {
  const id = useId();
  const [hours, setHours] = useState(24);
  const data = useLoad(() => api.get(`/api/v1/metrics/spot/availability?hours=${hours}`), `avail-${hours}`);
  const gpus = data.data ? data.data.gpus || [] : [];
  return (
    <Section
      title="Availability"
      id={`${id}-h`}
      actions={
        <div className="field inline">
          <label htmlFor={`${id}-hours`}>Trend over</label>
          <select id={`${id}-hours`} value={hours} onChange={(e) => setHours(Number(e.target.value))}>
            {WINDOWS.map((w) => (
              <option key={w.hours} value={w.hours}>
                {w.label}
              </option>
            ))}
          </select>
        </div>
      }
    >
      <State load={data} label="availability" empty={data.data && !gpus.length ? 'No market data yet.' : null} />
      {gpus.length ? (
        <div className="table-wrap">
          <table aria-label="Availability">
            <thead>
              <tr>
                <th scope="col">GPU</th>
                <th scope="col">Offers now</th>
                <th scope="col">GPUs now</th>
                <th scope="col">Change</th>
                <th scope="col">Trend</th>
                <th scope="col">GPUs over time</th>
              </tr>
            </thead>
            <tbody>
              {gpus.map((g) => {
                const values = (g.series || []).map((p) => p.available_gpus);
                const max = Math.max(1, ...values);
                return (
                  <tr key={g.gpu} data-testid="availability-row">
                    <th scope="row">{g.gpu}</th>
                    <td>{g.offers}</td>
                    <td>{g.available_gpus}</td>
                    <td>{g.change ? `${g.change.available_gpus >= 0 ? '+' : ''}${g.change.available_gpus} GPUs` : '—'}</td>
                    <td>{g.trend ? TREND[g.trend] || g.trend : '—'}</td>
                    <td>
                      <Sparkline values={values} max={max} label={`Available ${g.gpu} GPUs`} unit="" />
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      ) : null}
    </Section>
  );
}

function Reliability({ api }) {
  const id = useId();
  const data = useLoad(() => api.get('/api/v1/metrics/spot/reliability'), 'reliability');
  const rows = data.data ? data.data.rows || [] : [];
  const errors = data.data ? data.data.provider_errors || [] : [];
  return (
    <Section title="Reliability: the providers' figure and ours" id={`${id}-h`}>
      <State load={data} label="reliability" empty={data.data && !rows.length ? 'No market data yet.' : null} />
      <ProviderErrors errors={errors} />
      {rows.length ? (
        <div className="table-wrap">
          <table aria-label="Reliability">
            <thead>
              <tr>
                <th scope="col">Provider</th>
                <th scope="col">GPU</th>
                <th scope="col">Provider says</th>
                <th scope="col">Offers</th>
                <th scope="col">Our attempts</th>
                <th scope="col">Our success</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((r) => (
                <tr key={`${r.provider}/${r.gpu}`} data-testid="reliability-row">
                  <td>{r.provider}</td>
                  <td>{r.gpu}</td>
                  <td>{pct(r.provider_reliability)}</td>
                  <td>{r.offers ?? '—'}</td>
                  <td>
                    {r.history ? `${r.history.attempts} on ${r.history.hosts} host(s)` : '—'}
                  </td>
                  <td>{r.history && r.history.success_rate != null ? pct(r.history.success_rate) : <span className="muted">no record</span>}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </Section>
  );
}

function LlmGpus({ api }) {
  const id = useId();
  const data = useLoad(() => api.get('/api/v1/metrics/spot/llm-gpus'), 'llm');
  const gpus = data.data ? data.data.gpus || [] : [];
  const rule = data.data ? data.data.rule : null;
  return (
    <Section title="GPUs for LLM work" id={`${id}-h`}>
      <State load={data} label="LLM GPUs" empty={data.data && !gpus.length ? 'No GPU with 16 GB or more is on the market now.' : null} />
      {gpus.length ? (
        <div className="table-wrap">
          <table aria-label="GPUs for LLM work">
            <thead>
              <tr>
                <th scope="col">GPU</th>
                <th scope="col">VRAM</th>
                <th scope="col">Price</th>
                <th scope="col">Per GB of VRAM</th>
                <th scope="col">Spot</th>
                <th scope="col">Fits at fp16</th>
                <th scope="col">Fits at 4-bit</th>
              </tr>
            </thead>
            <tbody>
              {gpus.map((g) => (
                <tr key={g.gpu} data-testid="llm-row">
                  <th scope="row">{g.gpu}</th>
                  <td>{Math.round(g.vram_gb)} GB</td>
                  <td>
                    {gpuHour(g.price)} <span className="muted small">{g.provider}</span>
                  </td>
                  <td>{money(g.price_per_gb_vram, 4)}</td>
                  <td>{g.spot_price != null ? gpuHour(g.spot_price) : '—'}</td>
                  <td>{(g.fits?.fp16 || []).join(', ') || '—'}</td>
                  <td>{(g.fits?.['4bit'] || []).join(', ') || '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      {rule ? (
        <p className="muted small">
          One GPU&apos;s fit: a model of P billion parameters needs P × bytes per parameter × {rule.overhead} GB (2 bytes at fp16,
          0.5 at 4-bit; the {Math.round((rule.overhead - 1) * 100)} % covers the KV cache and activations).
        </p>
      ) : null}
    </Section>
  );
}

// Used by tests and the page head: when the newest sample of the summary was taken.
export function newestSample(summary) {
  let t = 0;
  for (const g of (summary && summary.gpus) || []) for (const p of g.providers || []) t = Math.max(t, p.sampled_at || 0);
  return t ? age(t) : null;
}
