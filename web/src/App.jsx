import { useEffect, useRef } from 'react';
import { AuthProvider, useAuth } from './auth.jsx';
import { Link, Router, useRouter } from './router.jsx';
import { ErrorBox, Loading } from './components/ui.jsx';
import { DashboardPage } from './pages/Dashboard.jsx';
import { LoginPage } from './pages/Login.jsx';
import { MachinesPage } from './pages/Machines.jsx';
import { MetricsPage } from './pages/Metrics.jsx';
import { SavingsPage } from './pages/Savings.jsx';
import { SettingsPage } from './pages/Settings.jsx';

// base '' is the console; DEMO_BASE ('/demo-app') is the same app on a demo account of its own.
export function App({ api, base = '' }) {
  return (
    <Router base={base}>
      <AuthProvider api={api} demo={base !== ''}>
        <Shell />
      </AuthProvider>
    </Router>
  );
}

export const PAGES = {
  '/': { title: 'Dashboard', Page: DashboardPage },
  '/machines': { title: 'Machines', Page: MachinesPage },
  '/metrics': { title: 'GPU metrics', Page: MetricsPage },
  '/savings': { title: 'Savings', Page: SavingsPage },
  '/settings': { title: 'Settings', Page: SettingsPage },
};
const ALIASES = { '/market': '/metrics', '/dashboard': '/' };
const NAV = [
  ['/', 'Dashboard'],
  ['/machines', 'Machines'],
  ['/metrics', 'Metrics'],
  ['/savings', 'Savings'],
  ['/settings', 'Settings'],
];

function Shell() {
  const auth = useAuth();
  const { path, navigate } = useRouter();

  useEffect(() => {
    if (ALIASES[path]) navigate(ALIASES[path], { replace: true });
    else if (!auth.demo && auth.status === 'anonymous' && path !== '/login') navigate('/login', { replace: true });
    else if (auth.status === 'ready' && path === '/login') navigate('/', { replace: true });
    else if (auth.demo && path === '/login') navigate('/', { replace: true });
  }, [auth.status, auth.demo, path]); // eslint-disable-line react-hooks/exhaustive-deps

  // After moving to another page, focus its main region so keyboard and screen-reader users start there.
  const firstPath = useRef(path);
  useEffect(() => {
    if (path === firstPath.current) return;
    firstPath.current = null;
    const main = document.getElementById('main');
    if (main && auth.status === 'ready') main.focus({ preventScroll: true });
  }, [path]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    const t = path === '/login' ? 'Log in' : (PAGES[path] && PAGES[path].title) || 'Not found';
    document.title = `${t} · ${auth.demo ? 'Dumont Cloud demo' : 'Dumont Cloud'}`;
  }, [path, auth.demo]);

  if (auth.status === 'loading') {
    return (
      <main className="center">
        <Loading label={auth.demo ? 'Starting your demo session…' : 'Restoring your session…'} />
      </main>
    );
  }
  if (auth.status === 'error') {
    return (
      <main className="center">
        <ErrorBox error={auth.error} title={auth.demo ? 'Cannot start the demo' : 'Cannot load your account'} onRetry={auth.retry} />
        {auth.demo ? (
          <p>
            <a href="/login">Log in or sign up instead</a>
          </p>
        ) : null}
      </main>
    );
  }
  if (auth.status !== 'ready') {
    if (auth.demo) return <DemoEnded />;
    return <LoginPage />;
  }

  const entry = PAGES[path];
  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <span className="brand">
          Dumont Cloud
          {auth.demo ? (
            <span className="demo-badge" data-testid="demo-badge" title="A demo account with sample data">
              DEMO
            </span>
          ) : null}
        </span>
        <nav aria-label="Main">
          {NAV.map(([to, label]) => (
            <Link key={to} to={to}>
              {label}
            </Link>
          ))}
        </nav>
        <div className="who">
          <span title={auth.user.email} className="email">
            {auth.demo ? 'demo account' : auth.user.email}
          </span>
          <span className="role" data-testid="role">
            {auth.user.role}
          </span>
          <button type="button" onClick={() => auth.logout()}>
            {auth.demo ? 'End demo' : 'Log out'}
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {entry ? (
          <entry.Page />
        ) : (
          <section>
            <h1>Not found</h1>
            <p>
              There is no page at <code>{path}</code>. <Link to="/">Go to the dashboard</Link>.
            </p>
          </section>
        )}
      </main>
    </>
  );
}

function DemoEnded() {
  const auth = useAuth();
  return (
    <main className="center" id="main">
      <p className="brand big">
        Dumont Cloud <span className="demo-badge">DEMO</span>
      </p>
      <div className="card auth-form">
        <h1>Your demo session has ended</h1>
        <p>Demo accounts are short-lived; their machines are destroyed when they end.</p>
        <button type="button" className="primary" onClick={() => auth.startDemo()}>
          Start a new demo
        </button>
        <p className="switch">
          <a href="/login">Log in or sign up</a> to keep your work.
        </p>
      </div>
    </main>
  );
}
