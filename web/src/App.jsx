import { useEffect } from 'react';
import { AuthProvider, useAuth } from './auth.jsx';
import { Link, Router, useRouter } from './router.jsx';
import { ErrorBox, Loading } from './components/ui.jsx';
import { LoginPage } from './pages/Login.jsx';
import { MachinesPage } from './pages/Machines.jsx';
import { MarketPage } from './pages/Market.jsx';
import { SavingsPage } from './pages/Savings.jsx';
import { SettingsPage } from './pages/Settings.jsx';

export function App({ api }) {
  return (
    <Router>
      <AuthProvider api={api}>
        <Shell />
      </AuthProvider>
    </Router>
  );
}

const PAGES = {
  '/': MachinesPage,
  '/machines': MachinesPage,
  '/market': MarketPage,
  '/savings': SavingsPage,
  '/settings': SettingsPage,
};

function Shell() {
  const auth = useAuth();
  const { path, navigate } = useRouter();

  useEffect(() => {
    if (auth.status === 'anonymous' && path !== '/login') navigate('/login', { replace: true });
    if (auth.status === 'ready' && path === '/login') navigate('/', { replace: true });
  }, [auth.status, path]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    const titles = { '/login': 'Log in', '/market': 'Market', '/savings': 'Savings', '/settings': 'Settings' };
    document.title = `${titles[path] || 'Machines'} · Dumont Cloud`;
  }, [path]);

  if (auth.status === 'loading') {
    return (
      <main className="center">
        <Loading label="Restoring your session…" />
      </main>
    );
  }
  if (auth.status === 'error') {
    return (
      <main className="center">
        <ErrorBox error={auth.error} title="Cannot load your account" onRetry={auth.retry} />
      </main>
    );
  }
  if (auth.status !== 'ready') return <LoginPage />;

  const Page = PAGES[path];
  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <span className="brand">Dumont Cloud</span>
        <nav aria-label="Main">
          <Link to="/">Machines</Link>
          <Link to="/market">Market</Link>
          <Link to="/savings">Savings</Link>
          <Link to="/settings">Settings</Link>
        </nav>
        <div className="who">
          <span title={auth.user.email} className="email">
            {auth.user.email}
          </span>
          <span className="role" data-testid="role">
            {auth.user.role}
          </span>
          <button type="button" onClick={() => auth.logout()}>
            Log out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {Page ? (
          <Page />
        ) : (
          <section>
            <h1>Not found</h1>
            <p>
              There is no page at <code>{path}</code>. <Link to="/">Go to your machines</Link>.
            </p>
          </section>
        )}
      </main>
    </>
  );
}
