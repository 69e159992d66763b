import { useId, useState } from 'react';
import { useAuth } from '../auth.jsx';

// Log in or create an account; errors show the API's message, next to the field it names.
export function LoginForm({ onLogin, onRegister }) {
  const [mode, setMode] = useState('login');
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState(null);
  const [busy, setBusy] = useState(false);
  const id = useId();

  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    setNotice(null);
    if (!email.trim() || !password) {
      setError({ message: 'Enter your email and password.', field: !email.trim() ? 'email' : 'password' });
      return;
    }
    setBusy(true);
    try {
      if (mode === 'register') {
        await onRegister(email.trim(), password);
        setNotice('Account created. Logging you in…');
      }
      await onLogin(email.trim(), password);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };

  const fieldError = (f) => error && error.field === f;
  const register = mode === 'register';
  return (
    <form className="card auth-form" onSubmit={submit} noValidate aria-labelledby={`${id}-title`}>
      <h1 id={`${id}-title`}>{register ? 'Create your account' : 'Log in to Dumont Cloud'}</h1>
      <div className="field">
        <label htmlFor={`${id}-email`}>Email</label>
        <input
          id={`${id}-email`}
          type="email"
          autoComplete={register ? 'email' : 'username'}
          value={email}
          onChange={(e) => setEmail(e.target.value)}
          aria-invalid={fieldError('email') || undefined}
          aria-describedby={error ? `${id}-error` : undefined}
          required
        />
      </div>
      <div className="field">
        <label htmlFor={`${id}-password`}>Password</label>
        <input
          id={`${id}-password`}
          type="password"
          autoComplete={register ? 'new-password' : 'current-password'}
          value={password}
          onChange={(e) => setPassword(e.target.value)}
          aria-invalid={fieldError('password') || undefined}
          aria-describedby={[register ? `${id}-hint` : null, error ? `${id}-error` : null].filter(Boolean).join(' ') || undefined}
          required
        />
        {register ? (
          <small id={`${id}-hint`} className="hint">
            At least 10 characters, not a common password.
          </small>
        ) : null}
      </div>
      {error ? (
        <div id={`${id}-error`} className="error" role="alert">
          {error.message}
        </div>
      ) : null}
      {notice && !error ? (
        <p className="notice" role="status">
          {notice}
        </p>
      ) : null}
      <button type="submit" className="primary" disabled={busy}>
        {busy ? (register ? 'Creating…' : 'Logging in…') : register ? 'Create account' : 'Log in'}
      </button>
      <p className="switch">
        {register ? 'Already have an account?' : 'New here?'}{' '}
        <button
          type="button"
          className="link"
          onClick={() => {
            setMode(register ? 'login' : 'register');
            setError(null);
            setNotice(null);
          }}
        >
          {register ? 'Log in instead' : 'Create an account'}
        </button>
      </p>
    </form>
  );
}

export function LoginPage() {
  const auth = useAuth();
  return (
    <main className="center" id="main">
      <p className="brand big">Dumont Cloud</p>
      <LoginForm onLogin={auth.login} onRegister={(e, p) => auth.api.register(e, p)} />
    </main>
  );
}
