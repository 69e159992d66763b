import { useCallback, useEffect, useId, useRef, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { InstanceCard } from '../components/InstanceCard.jsx';
import { ErrorBox, Loading } from '../components/ui.jsx';
import { loadHibernationDefaults } from '../prefs.js';
import { Link } from '../router.jsx';

const POLL_MS = 2000;
const HISTORY = 30;
// GPU readings per instance, kept while the app is open (survives switching pages).
const readings = new Map();

export function MachinesPage() {
  const { api, canMutate } = useAuth();
  const [instances, setInstances] = useState(null);
  const [error, setError] = useState(null);
  const [tick, setTick] = useState(0);
  const [showForm, setShowForm] = useState(false);
  const [showDestroyed, setShowDestroyed] = useState(false);
  const histories = useRef(readings);
  const timer = useRef(null);
  const alive = useRef(true);

  const poll = useCallback(async () => {
    clearTimeout(timer.current);
    try {
      const r = await api.get('/api/v1/instances');
      if (!alive.current) return;
      for (const i of r.instances) {
        if (!i.telemetry) continue;
        const h = histories.current.get(i.id) || [];
        const last = h.lastBeat;
        const next = [...h, i.telemetry.max_gpu_util].slice(-HISTORY);
        next.lastBeat = i.telemetry.last_heartbeat_ms;
        if (last !== next.lastBeat) histories.current.set(i.id, next);
      }
      setInstances(r.instances);
      setError(null);
    } catch (err) {
      if (!alive.current) return;
      setError(err);
    }
    setTick((t) => t + 1);
    if (alive.current) timer.current = setTimeout(poll, POLL_MS);
  }, [api]);

  useEffect(() => {
    alive.current = true;
    poll();
    return () => {
      alive.current = false;
      clearTimeout(timer.current);
    };
  }, [poll]);

  const list = instances ? instances.filter((i) => showDestroyed || i.state !== 'destroyed') : [];
  const hidden = instances ? instances.length - list.length : 0;
  return (
    <section aria-labelledby="machines-title">
      <div className="page-head">
        <h1 id="machines-title">Machines</h1>
        {canMutate ? (
          <button type="button" className="primary" aria-expanded={showForm} onClick={() => setShowForm((v) => !v)}>
            {showForm ? 'Close form' : 'New machine'}
          </button>
        ) : null}
      </div>
      {showForm && canMutate ? (
        <NewMachineForm
          api={api}
          onCreated={() => {
            setShowForm(false);
            poll();
          }}
          onCancel={() => setShowForm(false)}
        />
      ) : null}
      {error ? <ErrorBox error={error} title="Cannot refresh the machine list (retrying)" /> : null}
      {instances === null && !error ? <Loading label="Loading machines…" /> : null}
      {instances && list.length === 0 ? (
        <p className="muted empty">
          No machines yet.
          {canMutate ? (
            <>
              {' '}
              Deploy one from the <Link to="/">Dashboard</Link> or create one with “New machine”.
            </>
          ) : null}
        </p>
      ) : null}
      <div className="grid">
        {list.map((i) => (
          <InstanceCard
            key={i.id}
            instance={i}
            history={histories.current.get(i.id) || []}
            canMutate={canMutate}
            api={api}
            onChanged={poll}
            tick={tick}
          />
        ))}
      </div>
      {hidden > 0 || showDestroyed ? (
        <label className="check">
          <input type="checkbox" checked={showDestroyed} onChange={(e) => setShowDestroyed(e.target.checked)} /> Show
          destroyed machines ({instances ? instances.filter((i) => i.state === 'destroyed').length : 0})
        </label>
      ) : null}
    </section>
  );
}

export function NewMachineForm({ api, onCreated, onCancel }) {
  const id = useId();
  const [name, setName] = useState('');
  const [provider, setProvider] = useState('local');
  const [defaults] = useState(() => loadHibernationDefaults());
  const [enabled, setEnabled] = useState(defaults.enabled);
  const [idle, setIdle] = useState(String(defaults.idle_seconds));
  const [threshold, setThreshold] = useState(String(defaults.gpu_threshold_pct));
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    const idleN = Number(idle);
    const thrN = Number(threshold);
    if (!name.trim()) return setError({ field: 'name', message: 'Give the machine a name.' });
    if (!Number.isInteger(idleN) || idleN < 1) {
      return setError({ field: 'hibernation.idle_seconds', message: 'Idle seconds must be a whole number of at least 1.' });
    }
    if (!isFinite(thrN) || thrN < 0 || thrN > 100) {
      return setError({ field: 'hibernation.gpu_threshold_pct', message: 'The GPU threshold must be from 0 to 100 %.' });
    }
    setBusy(true);
    try {
      const body = {
        name: name.trim(),
        provider: provider.trim() || 'local',
        hibernation: { enabled, idle_seconds: idleN, gpu_threshold_pct: thrN, release_after_seconds: defaults.release_after_seconds },
      };
      const r = await api.post('/api/v1/instances', body);
      onCreated && onCreated(r.instance);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const inv = (f) => (error && error.field === f) || undefined;
  const desc = error ? `${id}-err` : undefined;
  return (
    <form className="card new-machine" onSubmit={submit} noValidate aria-label="New machine">
      <h2>New machine</h2>
      <p className="muted small">
        One machine on one provider, started at once. To race several offers within a budget, use the{' '}
        <Link to="/">deploy wizard on the Dashboard</Link>. Hibernation starts from your defaults in Settings.
      </p>
      <div className="form-grid">
        <div className="field">
          <label htmlFor={`${id}-name`}>Name</label>
          <input id={`${id}-name`} value={name} onChange={(e) => setName(e.target.value)} aria-invalid={inv('name')} aria-describedby={desc} required autoFocus />
        </div>
        <div className="field">
          <label htmlFor={`${id}-provider`}>Provider</label>
          <input id={`${id}-provider`} value={provider} onChange={(e) => setProvider(e.target.value)} aria-invalid={inv('provider')} aria-describedby={desc} list={`${id}-providers`} />
          <datalist id={`${id}-providers`}>
            <option value="local" />
            <option value="sim" />
          </datalist>
        </div>
        <div className="field">
          <label htmlFor={`${id}-idle`}>Hibernate after idle (seconds)</label>
          <input id={`${id}-idle`} type="number" min="1" step="1" inputMode="numeric" value={idle} onChange={(e) => setIdle(e.target.value)} aria-invalid={inv('hibernation.idle_seconds')} aria-describedby={desc} />
        </div>
        <div className="field">
          <label htmlFor={`${id}-thr`}>Idle below GPU utilisation (%)</label>
          <input id={`${id}-thr`} type="number" min="0" max="100" step="any" value={threshold} onChange={(e) => setThreshold(e.target.value)} aria-invalid={inv('hibernation.gpu_threshold_pct')} aria-describedby={desc} />
        </div>
      </div>
      <label className="check">
        <input type="checkbox" checked={enabled} onChange={(e) => setEnabled(e.target.checked)} /> Hibernate when idle
      </label>
      {error ? (
        <div id={`${id}-err`} className="error" role="alert">
          {error.message}
        </div>
      ) : null}
      <div className="actions">
        <button type="submit" className="primary" disabled={busy}>
          {busy ? 'Creating…' : 'Create machine'}
        </button>
        <button type="button" onClick={onCancel} disabled={busy}>
          Cancel
        </button>
      </div>
    </form>
  );
}
