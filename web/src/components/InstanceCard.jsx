import { useEffect, useId, useRef, useState } from 'react';
import { age, bytes, duration, money, time } from '../format.js';
import { useLoad } from '../useLoad.js';
import { CopyButton, ErrorBox, Loading, Sparkline, StateBadge } from './ui.jsx';

const ACTIONS = {
  running: ['pause', 'hibernate', 'snapshot'],
  paused: ['resume'],
  pausing: ['resume'],
  hibernated: ['wake'],
  hibernating: ['wake'],
  error: ['retry'],
};
const LABEL = { pause: 'Pause', resume: 'Resume', hibernate: 'Hibernate', wake: 'Wake', snapshot: 'Snapshot now', retry: 'Retry' };

// "ssh -p PORT root@HOST" when the machine has an SSH endpoint (providers that run sshd), else null.
export function sshCommand(machine) {
  const host = machine && (machine.ssh_host || (machine.ssh && machine.ssh.host));
  const port = machine && (machine.ssh_port || (machine.ssh && machine.ssh.port));
  if (!host || !port) return null;
  const user = (machine.ssh && machine.ssh.user) || machine.ssh_user || 'root';
  return `ssh -p ${port} ${user}@${host}`;
}

export function InstanceCard({ instance: i, history = [], canMutate, api, onChanged, tick = 0, nowMs }) {
  const [busy, setBusy] = useState(null);
  const [error, setError] = useState(null);
  const [confirming, setConfirming] = useState(false);
  const [showEvents, setShowEvents] = useState(false);
  const [showSnaps, setShowSnaps] = useState(false);
  const id = useId();
  const now = nowMs ?? Date.now();
  const base = `/api/v1/instances/${encodeURIComponent(i.id)}`;
  const gone = i.state === 'destroyed' || i.state === 'destroying' || i.desired === 'destroyed';
  // Telemetry of a machine that no longer runs is history, not a reading.
  const live = i.telemetry && !['hibernated', 'paused', 'destroyed', 'destroying'].includes(i.state);
  const util = live ? i.telemetry.max_gpu_util : null;
  // Only a machine that exists now has an address or a workspace (a hibernated instance has none).
  const hasMachine = !!i.machine?.id && !gone;
  const ssh = hasMachine ? sshCommand(i.machine) : null;

  const act = async (action) => {
    setBusy(action);
    setError(null);
    try {
      if (action === 'destroy') await api.del(base);
      else await api.post(`${base}/${action}`);
      setConfirming(false);
      onChanged && onChanged();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(null);
    }
  };

  const events = useLoad(() => api.get(`${base}/events?limit=30`).then((r) => r.events), `${tick}`, showEvents);
  const snaps = useLoad(
    () => api.get(`${base}/snapshots`).then((r) => r.snapshots),
    `${i.state}|${i.last_snapshot}|${showSnaps ? Math.floor(tick / 5) : 0}`,
    showSnaps,
  );

  const actions = canMutate && !gone ? ACTIONS[i.state] || [] : [];
  return (
    <article className="card instance" aria-labelledby={`${id}-name`} data-instance={i.id} data-state={i.state}>
      <header className="instance-head">
        <h2 id={`${id}-name`}>{i.name}</h2>
        <StateBadge state={i.state} />
      </header>
      {i.message ? <p className="muted small">{i.message}</p> : null}
      <dl className="facts">
        <div>
          <dt>GPU</dt>
          <dd>
            <span className="gpu-util" data-testid="gpu-util">
              {util == null ? '—' : `${Math.round(util)} %`}
            </span>{' '}
            <Sparkline values={history} label={`GPU utilisation of ${i.name}`} />
          </dd>
        </div>
        <div>
          <dt>Price</dt>
          <dd>{money(i.machine?.price_per_hour)}/h</dd>
        </div>
        <div>
          <dt>{i.state === 'running' ? 'Uptime' : `${i.state} for`}</dt>
          <dd>{duration(now / 1000 - i.state_since)}</dd>
        </div>
        <div>
          <dt>Provider</dt>
          <dd>{i.provider}</dd>
        </div>
        {live ? (
          <div>
            <dt>Heartbeat</dt>
            <dd data-testid="heartbeat">{duration((now - i.telemetry.last_heartbeat_ms) / 1000)} ago</dd>
          </div>
        ) : null}
        {i.hibernation ? (
          <div>
            <dt>Hibernation</dt>
            <dd>
              {i.hibernation.enabled
                ? `after ${duration(i.hibernation.idle_seconds)} under ${i.hibernation.gpu_threshold_pct} %`
                : 'off'}
            </dd>
          </div>
        ) : null}
        {ssh ? (
          <div className="wide">
            <dt>SSH</dt>
            <dd>
              <code className="path" data-testid="ssh-command">
                {ssh}
              </code>
              <CopyButton text={ssh} what={`the SSH command of ${i.name}`} />
            </dd>
          </div>
        ) : hasMachine && i.machine.workspace ? (
          <div className="wide">
            <dt>Workspace</dt>
            <dd>
              <code className="path" data-testid="workspace">
                {i.machine.workspace}
              </code>
              <CopyButton text={i.machine.workspace} label="Copy path" what={`of the workspace of ${i.name}`} />
            </dd>
          </div>
        ) : null}
      </dl>

      {canMutate && i.provider === 'local' && !gone ? (
        <GpuSlider api={api} base={base} instance={i} />
      ) : null}

      {actions.length || (canMutate && !gone) ? (
        <div className="actions" role="group" aria-label={`Actions for ${i.name}`}>
          {actions.map((a) => (
            <button key={a} type="button" onClick={() => act(a)} disabled={!!busy}>
              {busy === a ? `${LABEL[a]}…` : LABEL[a]}
            </button>
          ))}
          {!confirming ? (
            <button type="button" className="danger" onClick={() => setConfirming(true)} disabled={!!busy}>
              Destroy
            </button>
          ) : null}
        </div>
      ) : null}
      {confirming ? (
        <div className="confirm" role="alertdialog" aria-labelledby={`${id}-confirm`}>
          <p id={`${id}-confirm`}>
            Destroy <strong>{i.name}</strong>? Its machine is deleted; this cannot be undone.
          </p>
          <button type="button" className="danger" onClick={() => act('destroy')} disabled={!!busy} autoFocus>
            {busy === 'destroy' ? 'Destroying…' : 'Yes, destroy'}
          </button>
          <button type="button" onClick={() => setConfirming(false)} disabled={!!busy}>
            Cancel
          </button>
        </div>
      ) : null}
      <ErrorBox error={error} />

      <details onToggle={(e) => setShowEvents(e.currentTarget.open)}>
        <summary>Events</summary>
        {showEvents ? (
          <>
            {events.loading && !events.data ? <Loading /> : null}
            <ErrorBox error={events.error} onRetry={events.reload} />
            {events.data && events.data.length === 0 ? <p className="muted">No events yet.</p> : null}
            {events.data && events.data.length ? (
              <ol className="timeline">
                {events.data.map((e) => (
                  <li key={e.id}>
                    <time dateTime={new Date(e.time_ms).toISOString()}>{time(e.time_ms)}</time>{' '}
                    <span className="etype">{e.type}</span> {e.message}
                  </li>
                ))}
              </ol>
            ) : null}
          </>
        ) : null}
      </details>
      <details onToggle={(e) => setShowSnaps(e.currentTarget.open)}>
        <summary>Snapshots</summary>
        {showSnaps ? (
          <>
            {snaps.loading && !snaps.data ? <Loading /> : null}
            <ErrorBox error={snaps.error} onRetry={snaps.reload} />
            {snaps.data && snaps.data.length === 0 ? <p className="muted">No snapshots yet.</p> : null}
            {snaps.data && snaps.data.length ? (
              <table className="snapshots">
                <thead>
                  <tr>
                    <th scope="col">Snapshot</th>
                    <th scope="col">Size</th>
                    <th scope="col">Added</th>
                    <th scope="col">Age</th>
                  </tr>
                </thead>
                <tbody>
                  {snaps.data.map((s) => (
                    <tr key={s.id} data-testid="snapshot-row">
                      <td>
                        <code>{s.short_id}</code>{' '}
                        <span className="muted small">{(s.tags || []).filter((t) => !t.startsWith('instance:')).join(', ')}</span>
                      </td>
                      <td>{bytes(s.bytes_total)}</td>
                      <td>{bytes(s.bytes_added)}</td>
                      <td>{age(s.time_unix, now)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            ) : null}
          </>
        ) : null}
      </details>
    </article>
  );
}

// Sets the simulated GPU load of a local machine (PUT virtual-gpu), debounced while dragging.
function GpuSlider({ api, base, instance: i }) {
  const id = useId();
  const current = i.telemetry ? Math.round(i.telemetry.max_gpu_util) : 0;
  const [value, setValue] = useState(current);
  const [status, setStatus] = useState(null);
  const [error, setError] = useState(null);
  const touched = useRef(false);
  const timer = useRef(null);
  const enabled = i.state === 'running' && !!i.machine?.id;

  useEffect(() => {
    if (!touched.current) setValue(current);
  }, [current]);
  useEffect(() => () => clearTimeout(timer.current), []);

  const send = async (v) => {
    setStatus('Saving…');
    setError(null);
    try {
      await api.put(`${base}/virtual-gpu`, { util: v });
      setStatus(`Set to ${v} %`);
    } catch (err) {
      setStatus(null);
      setError(err);
    } finally {
      touched.current = false;
    }
  };
  const onChange = (e) => {
    const v = Number(e.target.value);
    touched.current = true;
    setValue(v);
    clearTimeout(timer.current);
    timer.current = setTimeout(() => send(v), 250);
  };

  return (
    <div className="slider">
      <label htmlFor={`${id}-gpu`}>Simulated GPU load</label>
      <input
        id={`${id}-gpu`}
        type="range"
        min="0"
        max="100"
        step="1"
        value={value}
        onChange={onChange}
        disabled={!enabled}
        aria-valuetext={`${value} %`}
        aria-describedby={`${id}-gpu-status`}
      />
      <output htmlFor={`${id}-gpu`}>{value} %</output>
      <span id={`${id}-gpu-status`} className="muted small" role="status">
        {enabled ? status : 'available while the machine runs'}
      </span>
      <ErrorBox error={error} />
    </div>
  );
}
