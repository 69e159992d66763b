import { useId, useState } from 'react';
import { useAuth } from '../auth.jsx';
import { ErrorBox, Loading } from '../components/ui.jsx';
import { age, dateTime } from '../format.js';
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
      <ApiKeys />
      {canMutate ? <ChangePassword /> : null}
    </section>
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
