// Who is logged in: the user from GET /auth/me, restored from the refresh token on load.
// Demo mode (the console at /demo-app/): no login form; a demo account of its own comes from
// POST /api/v1/demo/session (kept in its own refresh-token slot, beside any real session) and is
// reused across reloads until it ends, then the visitor is offered a new one.
import { createContext, useCallback, useContext, useEffect, useRef, useState } from 'react';

const AuthContext = createContext(null);

export function AuthProvider({ api, demo = false, children }) {
  const [user, setUser] = useState(null);
  const [status, setStatus] = useState(() => (api.hasSession() || demo ? 'loading' : 'anonymous'));
  const [error, setError] = useState(null);
  const [ended, setEnded] = useState(false); // demo: the session ended (expired or "End demo")
  const starting = useRef(null);

  const loadMe = useCallback(async () => {
    setStatus('loading');
    setError(null);
    try {
      const me = await api.get('/api/v1/auth/me');
      setUser(me.user);
      setStatus('ready');
      return true;
    } catch (err) {
      if (err.status === 401) {
        api.clearTokens();
        setUser(null);
        setStatus('anonymous');
        return false;
      }
      setError(err);
      setStatus('error');
      return true;
    }
  }, [api]);

  // Demo: a new demo account and its tokens, then who we are. Concurrent calls share one request.
  const startDemo = useCallback(() => {
    if (!starting.current) {
      starting.current = (async () => {
        setStatus('loading');
        setError(null);
        setEnded(false);
        try {
          await api.demoSession();
          await loadMe();
        } catch (err) {
          setError(err);
          setStatus('error');
        }
      })().finally(() => {
        starting.current = null;
      });
    }
    return starting.current;
  }, [api, loadMe]);

  useEffect(() => {
    api.onAuthLost = () => {
      setUser(null);
      setStatus('anonymous');
      if (demo) setEnded(true);
    };
    (async () => {
      if (api.hasSession()) {
        const ok = await loadMe();
        if (ok || !demo) return;
      } else if (!demo) {
        return;
      }
      await startDemo(); // demo: no session yet, or the stored one has ended
    })();
    return () => {
      api.onAuthLost = null;
    };
  }, [api, demo, loadMe, startDemo]);

  const login = useCallback(
    async (email, password) => {
      await api.login(email, password);
      await loadMe();
    },
    [api, loadMe],
  );

  // local: the server already ended the session (e.g. after a password change): only forget the tokens.
  const logout = useCallback(
    async ({ local = false } = {}) => {
      try {
        if (local) api.clearTokens();
        else await api.logout();
      } catch {
        /* the tokens are gone locally either way */
      }
      setUser(null);
      setStatus('anonymous');
      if (demo) setEnded(true);
    },
    [api, demo],
  );

  const value = {
    api,
    user,
    status,
    error,
    demo,
    ended,
    retry: demo && !user ? startDemo : loadMe,
    startDemo,
    login,
    logout,
    canMutate: !!user && user.role !== 'readonly',
  };
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth() {
  return useContext(AuthContext);
}
