// The landing page: fleet cards, the deploy wizard with its live multi-start progress, recent deploys
// and the offers table.
import { useCallback, useEffect, useRef, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { DeployProgress } from '../components/DeployProgress.jsx';
import { DeployWizard } from '../components/DeployWizard.jsx';
import { Offers } from '../components/Offers.jsx';
import { ErrorBox, Loading, StateBadge } from '../components/ui.jsx';
import { age, money } from '../format.js';
import { useRouter } from '../router.jsx';
import { useLoad } from '../useLoad.js';

const POLL_MS = 5000;

// Dollars hibernation saved inside the current calendar month (UTC): each hibernation's overlap with
// the month, at its price (an open one counts up to now).
export function savedThisMonth(events, nowMs = Date.now()) {
  const d = new Date(nowMs);
  const monthStart = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1) / 1000;
  const now = nowMs / 1000;
  let dollars = 0;
  for (const e of events || []) {
    const start = Math.max(e.started_at, monthStart);
    const end = e.ended_at ?? now;
    if (end > start) dollars += ((end - start) / 3600) * (e.price_per_hour || 0);
  }
  return dollars;
}

export function fleetCards(instances) {
  const running = instances.filter((i) => i.state === 'running');
  return {
    running: running.length,
    hibernated: instances.filter((i) => i.state === 'hibernated').length,
    spendPerHour: running.reduce((s, i) => s + (i.machine?.price_per_hour || 0), 0),
    busy: instances.filter((i) => ['provisioning', 'waking', 'hibernating', 'pausing', 'destroying'].includes(i.state)).length,
  };
}

export function DashboardPage() {
  const { api, canMutate, demo } = useAuth();
  const { navigate } = useRouter();
  const [wizard, setWizard] = useState(null); // null | { offer }
  const [following, setFollowing] = useState(null); // { deploy, name }
  const [providers, setProviders] = useState(['local']);
  const wizardRef = useRef(null);

  const fleet = useFleet(api);
  const savings = useLoad(async () => {
    const [real, events] = await Promise.all([api.get('/api/v1/metrics/savings/real'), api.get('/api/v1/metrics/hibernation/events')]);
    return { real, month: savedThisMonth(events.events) };
  }, `${fleet.data ? fleet.data.hibernated : ''}`);
  const deploys = useLoad(() => api.get('/api/v1/deploys?limit=5').then((r) => r.deploys), following ? following.deploy.id : 'none');
  const offersForProviders = useCallback((o) => setProviders((p) => (p.includes(o) ? p : [...p, o])), []);
  // Coming back to the page while a deploy runs (a reload, another tab): follow it again.
  const autoFollowed = useRef(false);
  useEffect(() => {
    if (autoFollowed.current || !deploys.data || !fleet.data) return;
    autoFollowed.current = true;
    const open = deploys.data.find((d) => d.state === 'pending' || d.state === 'running');
    if (open && !following) setFollowing({ deploy: open, name: fleet.data.names.get(open.instance_id) || open.instance_id });
  }, [deploys.data, fleet.data]); // eslint-disable-line react-hooks/exhaustive-deps

  const openWizard = (offer = null) => {
    setWizard({ offer });
    if (offer) offersForProviders(offer.provider);
    requestAnimationFrame(() => wizardRef.current && wizardRef.current.scrollIntoView({ block: 'start' }));
  };

  const c = fleet.data;
  return (
    <section aria-labelledby="dash-title">
      <div className="page-head">
        <h1 id="dash-title">Dashboard</h1>
        {canMutate && !wizard ? (
          <button type="button" className="primary" onClick={() => openWizard(null)}>
            Deploy a machine
          </button>
        ) : null}
      </div>
      {demo ? (
        <p className="notice-box" data-testid="demo-notice">
          <strong>Demo.</strong> You have a private demo account: machines are real processes on this server&apos;s local
          provider with a simulated GPU, and the market history is sample data. Everything here is yours alone and
          ends after a few hours. <a href="/login">Sign up</a> to keep your work.
        </p>
      ) : null}

      <div className="stats" aria-label="Your fleet now" role="group">
        <Stat label="Running" testid="card-running" value={c ? c.running : null} loading={fleet.loading && !c} />
        <Stat label="Hibernated" testid="card-hibernated" value={c ? c.hibernated : null} loading={fleet.loading && !c} />
        <Stat
          label="Spend per hour now"
          testid="card-spend"
          value={c ? `${money(c.spendPerHour)}/h` : null}
          sub={c && c.busy ? `${c.busy} machine(s) changing state` : 'sum of running machines'}
          loading={fleet.loading && !c}
        />
        <Stat
          label="Saved this month"
          testid="card-saved"
          value={savings.data ? money(savings.data.month) : null}
          sub={savings.data ? `${money(savings.data.real.total_dollars)} in all, by hibernation` : null}
          loading={savings.loading && !savings.data}
        />
      </div>
      <ErrorBox error={fleet.error} title="Cannot load your machines" onRetry={fleet.reload} />
      <ErrorBox error={savings.error} title="Cannot load savings" onRetry={savings.reload} />

      {following ? (
        <DeployProgress
          key={following.deploy.id}
          api={api}
          deploy={following.deploy}
          name={following.name}
          onClose={() => {
            setFollowing(null);
            fleet.reload();
          }}
          onOpenMachines={() => navigate('/machines')}
          onFinished={() => {
            fleet.reload();
            deploys.reload();
          }}
        />
      ) : null}

      <div ref={wizardRef}>
        {wizard && canMutate ? (
          <DeployWizard
            api={api}
            offer={wizard.offer}
            providers={providers}
            onCancel={() => setWizard(null)}
            onDeployed={(deploy, name) => {
              setWizard(null);
              setFollowing({ deploy, name });
              fleet.reload();
            }}
          />
        ) : null}
      </div>

      <RecentDeploys
        deploys={deploys}
        names={c ? c.names : new Map()}
        onShow={(d) => setFollowing({ deploy: d, name: (c && c.names.get(d.instance_id)) || d.instance_id })}
        current={following ? following.deploy.id : null}
      />

      <Offers api={api} canMutate={canMutate} onDeploy={(o) => openWizard(o)} onProviders={offersForProviders} />
    </section>
  );
}

function Stat({ label, value, sub, testid, loading }) {
  return (
    <div className="card stat">
      <span className="stat-label">{label}</span>
      <span className="stat-value" data-testid={testid}>
        {loading ? <span className="muted">…</span> : value ?? '—'}
      </span>
      {sub ? <span className="muted small">{sub}</span> : null}
    </div>
  );
}

// Instances for the cards, every POLL_MS while the page is open.
function useFleet(api) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const timer = useRef(null);
  const alive = useRef(true);
  const load = useCallback(async () => {
    clearTimeout(timer.current);
    try {
      const r = await api.get('/api/v1/instances');
      if (!alive.current) return;
      const cards = fleetCards(r.instances);
      cards.names = new Map(r.instances.map((i) => [i.id, i.name]));
      setState({ data: cards, error: null, loading: false });
    } catch (error) {
      if (!alive.current) return;
      setState((s) => ({ ...s, error, loading: false }));
    }
    timer.current = setTimeout(load, POLL_MS);
  }, [api]);
  useEffect(() => {
    alive.current = true;
    load();
    return () => {
      alive.current = false;
      clearTimeout(timer.current);
    };
  }, [load]);
  return { ...state, reload: load };
}

function RecentDeploys({ deploys, names, onShow, current }) {
  if (deploys.loading && !deploys.data) return <Loading label="Loading recent deploys…" />;
  if (deploys.error) return <ErrorBox error={deploys.error} title="Cannot load recent deploys" onRetry={deploys.reload} />;
  const list = deploys.data || [];
  if (!list.length) return null;
  return (
    <div className="card" role="region" aria-label="Recent deploys">
      <h2>Recent deploys</h2>
      <div className="table-wrap">
        <table aria-label="Recent deploys">
          <thead>
            <tr>
              <th scope="col">Machine</th>
              <th scope="col">Why</th>
              <th scope="col">State</th>
              <th scope="col">Started</th>
              <th scope="col">Machines</th>
              <th scope="col">Losers cost</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {list.map((d) => (
              <tr key={d.id} data-testid="deploy-row">
                <td>{names.get(d.instance_id) || <code>{d.instance_id}</code>}</td>
                <td>{d.reason}</td>
                <td>
                  <StateBadge state={d.state === 'running' ? 'provisioning' : d.state} label={d.state} />
                </td>
                <td>{age(d.created_ms / 1000)}</td>
                <td>{(d.machines || []).length}</td>
                <td>{money(d.loser_cost_usd, 4)}</td>
                <td>
                  <button type="button" onClick={() => onShow(d)} disabled={current === d.id} aria-label={`Show progress of deploy ${d.id}`}>
                    {current === d.id ? 'Shown' : 'Show'}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}
