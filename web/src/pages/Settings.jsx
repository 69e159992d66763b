import { useId, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { ErrorBox, Loading } from '../components/ui.jsx';
import { age, dateTime } from '../format.js';
import { loadHibernationDefaults, resetHibernationDefaults, saveHibernationDefaults, SERVER_HIBERNATION } from '../prefs.js';
import { useLoad } from '../useLoad.js';

export function SettingsPage() {
  const { user, canMutate } = useAuth();
  return (
    <section aria-labelledby="settings-title">
      <div className="page-head">
        <h1 id="settings-title">Settings</h1>
      </div>
      <p className="muted">
        Signed in as <strong>{user.email}</strong> ({user.role}).
        {!canMutate ? ' Your account is read-only: you can look, not change.' : ''}
      </p>
      <ProviderCredentials />
      <HibernationDefaults />
      <ApiKeys />
      {canMutate ? <ChangePassword /> : null}
    </section>
  );
}

const FIELD_LABEL = {
  api_key: 'API key',
  service_account_json: 'Service-account key (JSON)',
  project: 'Project id',
  zone: 'Zone',
};
const SECRET = new Set(['api_key', 'service_account_json']);

// Per-provider credentials: write-only. The server answers whether they are saved and a hint (the
// last characters of a long key); a saved value is never shown, not even masked.
function ProviderCredentials() {
  const { api, canMutate, demo } = useAuth();
  const id = useId();
  const list = useLoad(() => api.get('/api/v1/settings/providers').then((r) => r.providers || []), 'providers');
  return (
    <div className="card" role="region" aria-labelledby={`${id}-h`}>
      <h2 id={`${id}-h`}>Provider credentials</h2>
      <p className="muted small">
        Your own keys for marketplaces. They are encrypted on the server, used only for your machines, and never shown again:
        you can replace or forget them. Without your own key, a server-wide key (if the operator set one) is used.
        {demo ? ' In the demo, do not enter a real key.' : ''}
      </p>
      {list.loading && !list.data ? <Loading label="Loading providers…" /> : null}
      <ErrorBox error={list.error} title="Cannot load providers" onRetry={list.reload} />
      {list.data && !list.data.length ? <p className="muted">No provider takes credentials on this server.</p> : null}
      {list.data
        ? list.data.map((p) => <ProviderCredential key={p.provider} p={p} api={api} canMutate={canMutate} onChanged={list.reload} />)
        : null}
    </div>
  );
}

function ProviderCredential({ p, api, canMutate, onChanged }) {
  const id = useId();
  const [values, setValues] = useState({});
  const [busy, setBusy] = useState(null);
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState(null);
  const [confirm, setConfirm] = useState(false);
  const url = `/api/v1/settings/providers/${encodeURIComponent(p.provider)}`;

  const save = async (e) => {
    e.preventDefault();
    setError(null);
    setNotice(null);
    const body = {};
    for (const f of p.fields) {
      const v = (values[f.name] || '').trim();
      if (v) body[f.name] = v;
    }
    const missing = p.fields.find((f) => f.required && !body[f.name]);
    if (missing) return setError({ field: missing.name, message: `${FIELD_LABEL[missing.name] || missing.name} is required.` });
    setBusy('save');
    try {
      const r = await api.put(url, body);
      setValues({}); // never keep a secret around once it is saved
      setNotice(`Saved (${r.hint || 'saved'}).`);
      await onChanged();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(null);
    }
  };
  const forget = async () => {
    setError(null);
    setNotice(null);
    setBusy('forget');
    try {
      await api.del(url);
      setConfirm(false);
      setNotice('Forgotten.');
      await onChanged();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(null);
    }
  };
  const errId = `${id}-err`;
  return (
    <form className="provider-cred" onSubmit={save} noValidate aria-labelledby={`${id}-t`} data-testid="provider-credential" data-provider={p.provider}>
      <h3 id={`${id}-t`}>
        {p.title} <span className="muted small">({p.provider})</span>
      </h3>
      <p className="small" data-testid="credential-status">
        {p.configured ? (
          <>
            <span className="badge badge-ok">saved</span> <code>{p.hint}</code>
            {p.updated_at ? <span className="muted"> · updated {age(p.updated_at)}</span> : null}
          </>
        ) : (
          <>
            <span className="badge badge-off">not set</span>
            {p.server_default ? <span className="muted"> · the server-wide key is used</span> : null}
          </>
        )}
      </p>
      {canMutate ? (
        <>
          <div className="form-grid">
            {p.fields.map((f) => {
              const fid = `${id}-${f.name}`;
              const common = {
                id: fid,
                value: values[f.name] || '',
                onChange: (e) => setValues((v) => ({ ...v, [f.name]: e.target.value })),
                autoComplete: 'off',
                spellCheck: false,
                'aria-invalid': (error && error.field === f.name) || undefined,
                'aria-describedby': error ? errId : undefined,
                placeholder: p.configured ? 'saved — type to replace' : f.required ? 'required' : 'optional',
              };
              return (
                <div className="field" key={f.name}>
                  <label htmlFor={fid}>
                    {FIELD_LABEL[f.name] || f.name}
                    {f.required ? '' : ' (optional)'}
                  </label>
                  {f.name === 'service_account_json' ? (
                    <textarea rows={3} {...common} />
                  ) : (
                    <input type={SECRET.has(f.name) ? 'password' : 'text'} {...common} />
                  )}
                </div>
              );
            })}
          </div>
          {error ? (
            <div id={errId} className="error" role="alert">
              {error.message}
            </div>
          ) : null}
          {notice ? (
            <p className="notice" role="status">
              {notice}
            </p>
          ) : null}
          <div className="actions">
            <button type="submit" className="primary" disabled={!!busy} aria-label={`Save ${p.title} credentials`}>
              {busy === 'save' ? 'Saving…' : p.configured ? 'Replace' : 'Save'}
            </button>
            {p.configured && !confirm ? (
              <button type="button" className="danger" onClick={() => setConfirm(true)} disabled={!!busy} aria-label={`Forget ${p.title} credentials`}>
                Forget…
              </button>
            ) : null}
            {confirm ? (
              <>
                <button type="button" className="danger" onClick={forget} disabled={!!busy} aria-label={`Confirm forgetting ${p.title} credentials`}>
                  {busy === 'forget' ? 'Forgetting…' : 'Yes, forget'}
                </button>
                <button type="button" onClick={() => setConfirm(false)} disabled={!!busy}>
                  Cancel
                </button>
              </>
            ) : null}
          </div>
        </>
      ) : null}
    </form>
  );
}

// Default hibernation thresholds, kept in this browser (localStorage): the deploy wizard and the
// new-machine form start from them.
function HibernationDefaults() {
  const id = useId();
  const [form, setForm] = useState(() => {
    const d = loadHibernationDefaults();
    return { enabled: d.enabled, gpu_threshold_pct: String(d.gpu_threshold_pct), idle_seconds: String(d.idle_seconds), release_after_seconds: String(d.release_after_seconds), saved: d.saved };
  });
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState(null);
  const set = (k) => (e) => setForm((f) => ({ ...f, [k]: e.target.type === 'checkbox' ? e.target.checked : e.target.value }));
  const save = (e) => {
    e.preventDefault();
    setNotice(null);
    const r = saveHibernationDefaults(form);
    setError(r.error || null);
    if (!r.error) {
      setForm((f) => ({ ...f, saved: true }));
      setNotice('Saved in this browser. New deploys start from these values.');
    }
  };
  const reset = () => {
    resetHibernationDefaults();
    const d = SERVER_HIBERNATION;
    setForm({ enabled: d.enabled, gpu_threshold_pct: String(d.gpu_threshold_pct), idle_seconds: String(d.idle_seconds), release_after_seconds: String(d.release_after_seconds), saved: false });
    setError(null);
    setNotice('Back to the server defaults.');
  };
  const inv = (k) => (error && error.field === k) || undefined;
  const desc = (k) => (error && error.field === k ? `${id}-err` : undefined);
  return (
    <form className="card" onSubmit={save} noValidate aria-labelledby={`${id}-h`}>
      <h2 id={`${id}-h`}>Hibernation defaults</h2>
      <p className="muted small">
        Stored in this browser only (localStorage), not on the server: the deploy wizard and “New machine” start from these
        values, and each machine keeps the settings it was created with. Server defaults: {SERVER_HIBERNATION.gpu_threshold_pct} % for{' '}
        {SERVER_HIBERNATION.idle_seconds} s.
      </p>
      <label className="check">
        <input type="checkbox" checked={form.enabled} onChange={set('enabled')} /> Hibernate idle machines
      </label>
      <div className="form-grid">
        <div className="field">
          <label htmlFor={`${id}-thr`}>Idle below GPU utilisation (%)</label>
          <input id={`${id}-thr`} type="number" min="0" max="100" step="any" inputMode="decimal" value={form.gpu_threshold_pct} onChange={set('gpu_threshold_pct')} aria-invalid={inv('gpu_threshold_pct')} aria-describedby={desc('gpu_threshold_pct')} />
        </div>
        <div className="field">
          <label htmlFor={`${id}-idle`}>Hibernate after idle (seconds)</label>
          <input id={`${id}-idle`} type="number" min="1" step="1" inputMode="numeric" value={form.idle_seconds} onChange={set('idle_seconds')} aria-invalid={inv('idle_seconds')} aria-describedby={desc('idle_seconds')} />
        </div>
        <div className="field">
          <label htmlFor={`${id}-rel`}>Release reservations after (seconds)</label>
          <input id={`${id}-rel`} type="number" min="0" step="1" inputMode="numeric" value={form.release_after_seconds} onChange={set('release_after_seconds')} aria-invalid={inv('release_after_seconds')} aria-describedby={desc('release_after_seconds')} />
        </div>
      </div>
      {error ? (
        <div id={`${id}-err`} className="error" role="alert">
          {error.message}
        </div>
      ) : null}
      {notice ? (
        <p className="notice" role="status">
          {notice}
        </p>
      ) : null}
      <div className="actions">
        <button type="submit" className="primary">
          Save defaults
        </button>
        <button type="button" onClick={reset}>
          Use server defaults
        </button>
      </div>
    </form>
  );
}

function ApiKeys() {
  const { api, canMutate } = useAuth();
  const id = useId();
  const keys = useLoad(() => api.get('/api/v1/auth/api-keys').then((r) => r.api_keys), 'keys');
  const [name, setName] = useState('');
  const [created, setCreated] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(null);
  const [confirm, setConfirm] = useState(null);
  const [copied, setCopied] = useState(false);

  const create = async (e) => {
    e.preventDefault();
    setError(null);
    if (!name.trim()) return setError({ message: 'Give the key a name (what it is for).', field: 'name' });
    setBusy('create');
    try {
      const r = await api.post('/api/v1/auth/api-keys', { name: name.trim() });
      setCreated(r.api_key);
      setCopied(false);
      setName('');
      keys.reload();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(null);
    }
  };
  const revoke = async (k) => {
    setError(null);
    setBusy(k.id);
    try {
      await api.del(`/api/v1/auth/api-keys/${encodeURIComponent(k.id)}`);
      setConfirm(null);
      if (created && created.id === k.id) setCreated(null);
      keys.reload();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(null);
    }
  };
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(created.key);
      setCopied(true);
    } catch {
      setCopied(false);
    }
  };

  return (
    <div className="card" aria-labelledby={`${id}-h`} role="region">
      <h2 id={`${id}-h`}>API keys</h2>
      <p className="muted small">
        Keys authenticate the CLI and scripts as you (header <code>X-API-Key</code>), with your role.
      </p>
      {created ? (
        <div className="secret" role="status">
          <p>
            <strong>New key “{created.name}”.</strong> Copy it now: it is shown only this once.
          </p>
          <code data-testid="new-key">{created.key}</code>
          <div className="actions">
            <button type="button" onClick={copy}>
              {copied ? 'Copied' : 'Copy'}
            </button>
            <button type="button" onClick={() => setCreated(null)}>
              Done
            </button>
          </div>
        </div>
      ) : null}
      {canMutate ? (
        <form className="inline-form" onSubmit={create} noValidate>
          <div className="field">
            <label htmlFor={`${id}-name`}>Key name</label>
            <input id={`${id}-name`} value={name} onChange={(e) => setName(e.target.value)} placeholder="e.g. laptop CLI" aria-invalid={(error && error.field === 'name') || undefined} />
          </div>
          <button type="submit" className="primary" disabled={busy === 'create'}>
            {busy === 'create' ? 'Creating…' : 'Create key'}
          </button>
        </form>
      ) : null}
      <ErrorBox error={error} />
      {keys.loading && !keys.data ? <Loading label="Loading keys…" /> : null}
      <ErrorBox error={keys.error} title="Cannot load your keys" onRetry={keys.reload} />
      {keys.data && keys.data.length === 0 ? <p className="muted">No API keys.</p> : null}
      {keys.data && keys.data.length ? (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Prefix</th>
                <th scope="col">Created</th>
                <th scope="col">Last used</th>
                {canMutate ? <th scope="col"><span className="sr-only">Actions</span></th> : null}
              </tr>
            </thead>
            <tbody>
              {keys.data.map((k) => (
                <tr key={k.id} data-testid="api-key-row">
                  <td>{k.name}</td>
                  <td>
                    <code>{k.prefix}…</code>
                  </td>
                  <td title={dateTime(k.created_at)}>{age(k.created_at)}</td>
                  <td>{k.last_used_at ? age(k.last_used_at) : 'never'}</td>
                  {canMutate ? (
                    <td className="row-actions">
                      {confirm === k.id ? (
                        <>
                          <button type="button" className="danger" onClick={() => revoke(k)} disabled={busy === k.id} aria-label={`Confirm revoking ${k.name}`}>
                            {busy === k.id ? 'Revoking…' : 'Revoke'}
                          </button>
                          <button type="button" onClick={() => setConfirm(null)}>
                            Cancel
                          </button>
                        </>
                      ) : (
                        <button type="button" onClick={() => setConfirm(k.id)} aria-label={`Revoke ${k.name}`}>
                          Revoke…
                        </button>
                      )}
                    </td>
                  ) : null}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </div>
  );
}

function ChangePassword() {
  const { api, logout } = useAuth();
  const id = useId();
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [again, setAgain] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState(false);

  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    if (!current || !next) return setError({ message: 'Fill in your current and new password.' });
    if (next !== again) return setError({ message: 'The new passwords do not match.', field: 'again' });
    setBusy(true);
    try {
      await api.post('/api/v1/auth/password', { current_password: current, new_password: next });
      setDone(true);
      // The server ended every session: go back to the login page.
      setTimeout(() => logout({ local: true }), 1500);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };
  const inv = (f) => (error && error.field === f) || undefined;
  return (
    <form className="card" onSubmit={submit} noValidate aria-labelledby={`${id}-h`}>
      <h2 id={`${id}-h`}>Change password</h2>
      <p className="muted small">Changing it logs you out everywhere.</p>
      <div className="form-grid">
        <div className="field">
          <label htmlFor={`${id}-cur`}>Current password</label>
          <input id={`${id}-cur`} type="password" autoComplete="current-password" value={current} onChange={(e) => setCurrent(e.target.value)} aria-invalid={inv('current_password')} />
        </div>
        <div className="field">
          <label htmlFor={`${id}-new`}>New password</label>
          <input id={`${id}-new`} type="password" autoComplete="new-password" value={next} onChange={(e) => setNext(e.target.value)} aria-invalid={inv('new_password')} />
        </div>
        <div className="field">
          <label htmlFor={`${id}-again`}>New password again</label>
          <input id={`${id}-again`} type="password" autoComplete="new-password" value={again} onChange={(e) => setAgain(e.target.value)} aria-invalid={inv('again')} />
        </div>
      </div>
      <ErrorBox error={error} />
      {done ? (
        <p className="notice" role="status">
          Password changed. Logging you out…
        </p>
      ) : null}
      <button type="submit" className="primary" disabled={busy}>
        {busy ? 'Changing…' : 'Change password'}
      </button>
    </form>
  );
}
