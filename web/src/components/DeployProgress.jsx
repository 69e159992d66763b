// A deploy's multi-start race, live: every machine started (offer, batch, state, reachable, why it was
// destroyed, what it cost), the winner, time to ready and what the losers cost. Events come from the
// server-sent event stream (followDeploy: fetch + ReadableStream, resumed with Last-Event-ID, polling as
// the fallback); the deploy record (GET /deploys/{id}) fills in billed time and cost at the end.
import { useCallback, useEffect, useRef, useState } from 'react';
import { money, seconds, time } from '../format.js';
import { foldDeploy, followDeploy, mergeDeployRecord } from '../sse.js';
import { ErrorBox, StateBadge } from './ui.jsx';

const TRANSPORT = {
  streaming: 'live (server-sent events)',
  reconnecting: 'reconnecting…',
  polling: 'live (polling)',
  done: 'finished',
};

const END = {
  winner: 'winner',
  loser: 'lost the race',
  batch_timeout: 'batch timed out',
  create_failed: 'could not be created',
  failed: 'failed',
  deploy_failed: 'deploy failed',
  cancelled: 'cancelled',
};

export function describeEvent(ev) {
  const d = ev.data || {};
  switch (ev.type) {
    case 'deploy_started':
      return `Deploy started on ${d.provider}: ${d.offers} offer(s) to choose from${d.blacklisted ? `, ${d.blacklisted} blacklisted` : ''}.`;
    case 'batch_started':
      return `Batch ${d.batch} started: ${(d.offers || []).map((o) => o.id).join(', ')}.`;
    case 'machine_created':
      return `${d.label} created on offer ${d.offer ? d.offer.id : '?'} (batch ${d.batch}).`;
    case 'machine_failed':
      return `${d.label} could not be created: ${d.error}.`;
    case 'machine_state':
      return `${d.label} is ${d.state}${d.reachable ? ' and reachable' : ''}.`;
    case 'machine_destroyed':
      return `${d.label} destroyed (${END[d.reason] || d.reason}), cost ${money(d.cost_usd, 4)}.`;
    case 'deploy_succeeded':
      return `Ready: ${d.winner ? d.winner.label : 'a machine'} won in ${seconds(d.time_to_ready_s)}; losers cost ${money(d.loser_cost_usd, 4)}.`;
    case 'deploy_failed':
      return `Deploy failed: ${d.reason}.`;
    default:
      return ev.type;
  }
}

export function DeployProgress({ api, deploy, name, onClose, onOpenMachines, onFinished }) {
  const [state, setState] = useState(() => ({ phase: deploy.state || 'pending', machines: {}, order: [], events: [], batches: 0 }));
  const [transport, setTransport] = useState('streaming');
  const [error, setError] = useState(null);
  const [now, setNow] = useState(Date.now());
  const [run, setRun] = useState(0);
  const [announce, setAnnounce] = useState('');
  const finished = state.phase === 'succeeded' || state.phase === 'failed';
  const times = useRef(new Map());

  useEffect(() => {
    const ctl = new AbortController();
    setError(null);
    followDeploy(api, deploy.id, {
      signal: ctl.signal,
      onEvent: (ev) => {
        times.current.set(ev.seq, ev.time_ms || Date.now());
        setState((s) => foldDeploy(s, ev));
        if (['batch_started', 'deploy_succeeded', 'deploy_failed', 'machine_failed'].includes(ev.type)) setAnnounce(describeEvent(ev));
      },
      onStatus: (s) => setTransport(s),
    })
      .then(async () => {
        if (ctl.signal.aborted) return;
        try {
          const r = await api.get(`/api/v1/deploys/${encodeURIComponent(deploy.id)}`);
          setState((s) => mergeDeployRecord(s, r.deploy));
        } catch (err) {
          setError(err);
        }
      })
      .catch((err) => {
        if (!ctl.signal.aborted) setError(err);
      });
    return () => ctl.abort();
  }, [api, deploy.id, run]);

  useEffect(() => {
    if (finished && onFinished) onFinished(state.phase);
  }, [finished]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    if (finished) return undefined;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [finished]);

  const retry = useCallback(() => setRun((n) => n + 1), []);
  const machines = state.order.map((l) => state.machines[l]);
  const elapsed = ((finished && state.timeToReady != null ? null : now) - deploy.created_ms) / 1000;
  return (
    <section className="card deploy-progress" aria-labelledby="deploy-progress-title" data-deploy={deploy.id} data-phase={state.phase}>
      <div className="page-head">
        <h2 id="deploy-progress-title">
          Deploying {name || 'machine'} <StateBadge state={state.phase === 'running' ? 'provisioning' : state.phase} label={state.phase} />
        </h2>
        <div className="actions">
          {state.phase === 'succeeded' && onOpenMachines ? (
            <button type="button" className="primary" onClick={onOpenMachines}>
              Open Machines
            </button>
          ) : null}
          {onClose ? (
            <button type="button" onClick={onClose}>
              {finished ? 'Close' : 'Hide'}
            </button>
          ) : null}
        </div>
      </div>
      <p className="muted small">
        <span data-testid="transport">{TRANSPORT[transport] || transport}</span> · deploy <code>{deploy.id}</code>
        {!finished && Number.isFinite(elapsed) ? ` · ${seconds(Math.max(0, elapsed))} so far` : ''}
        {state.batches ? ` · batch ${state.batches}` : ''}
      </p>
      <p className="sr-only" role="status" aria-live="polite">
        {announce}
      </p>
      <ErrorBox error={error} title="Cannot follow the deploy" onRetry={retry} />

      {state.phase === 'succeeded' ? (
        <div className="stats compact" data-testid="deploy-summary">
          <div className="stat">
            <span className="stat-label">Winner</span>
            <span className="stat-value small-value" data-testid="winner">
              {state.winner ? (state.winner.offer ? state.winner.offer.id : state.winner.label) : '—'}
            </span>
            <span className="muted small wrap">
              {state.winner ? `${state.winner.label}${state.winner.offer ? `, ${money(state.winner.offer.price_per_hour, 3)}/h` : ''}` : ''}
            </span>
          </div>
          <div className="stat">
            <span className="stat-label">Time to ready</span>
            <span className="stat-value small-value" data-testid="time-to-ready">
              {seconds(state.timeToReady)}
            </span>
          </div>
          <div className="stat">
            <span className="stat-label">Machines started</span>
            <span className="stat-value small-value">{state.machinesStarted ?? machines.length}</span>
          </div>
          <div className="stat">
            <span className="stat-label">Cost of losers</span>
            <span className="stat-value small-value" data-testid="loser-cost">
              {money(state.loserCost, 4)}
            </span>
          </div>
        </div>
      ) : null}
      {state.phase === 'failed' ? (
        <div className="error" role="alert" data-testid="deploy-failure">
          <strong>The deploy failed: </strong>
          {state.failure || 'no machine became ready'}. The instance is in error: use Retry on its card in Machines.
        </div>
      ) : null}

      {machines.length ? (
        <div className="table-wrap">
          <table aria-label="Machines in the race">
            <thead>
              <tr>
                <th scope="col">Machine</th>
                <th scope="col">Offer</th>
                <th scope="col">Batch</th>
                <th scope="col">State</th>
                <th scope="col">Reachable</th>
                <th scope="col">Outcome</th>
                <th scope="col">Cost</th>
              </tr>
            </thead>
            <tbody>
              {machines.map((m) => (
                <tr key={m.label} data-testid="race-row" data-label={m.label} data-winner={m.winner ? 'true' : undefined}>
                  <td>
                    <code>{m.label}</code>
                    {m.machine_id && m.machine_id !== m.label ? <div className="muted small">{m.machine_id}</div> : null}
                  </td>
                  <td>
                    {m.offer ? (
                      <>
                        <code>{m.offer.id}</code>
                        <div className="muted small">
                          {m.offer.gpu || '—'}, {money(m.offer.price_per_hour, 3)}/h
                        </div>
                      </>
                    ) : (
                      '—'
                    )}
                  </td>
                  <td>{m.batch ?? '—'}</td>
                  <td>
                    {m.destroyed ? <StateBadge state="destroyed" /> : <StateBadge state={machineBadge(m.state)} label={m.state || '—'} />}
                  </td>
                  <td>{m.reachable ? 'yes' : 'no'}</td>
                  <td>
                    {m.winner ? (
                      <strong className="ok-text">winner</strong>
                    ) : m.end ? (
                      <span title={m.error || undefined}>{END[m.end] || m.end}{m.destroyed ? ', destroyed' : ''}</span>
                    ) : m.error ? (
                      m.error
                    ) : (
                      <span className="muted">racing</span>
                    )}
                  </td>
                  <td>{m.winner ? <span className="muted small">billed as your machine</span> : m.cost_usd != null ? money(m.cost_usd, 4) : '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : (
        <p className="muted">{finished ? 'No machine was started.' : 'Waiting for the first batch…'}</p>
      )}

      <details>
        <summary>Event log ({state.events.length})</summary>
        <ol className="timeline" aria-label="Deploy events">
          {state.events.map((ev) => (
            <li key={ev.seq} data-testid="deploy-event" data-type={ev.type}>
              <time>{time(times.current.get(ev.seq))}</time> <span className="etype">{ev.type}</span> {describeEvent(ev)}
            </li>
          ))}
        </ol>
      </details>
    </section>
  );
}

function machineBadge(s) {
  if (s === 'running') return 'running';
  if (s === 'failed') return 'error';
  if (s === 'terminated' || s === 'terminating') return 'destroyed';
  if (s === 'stopped') return 'paused';
  return 'provisioning';
}
