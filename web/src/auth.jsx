// Who is logged in: the user from GET /auth/me, restored from the refresh token on load.
import { createContext, useCallback, useContext, useEffect, useState } from 'react';

const AuthContext = createContext(null);

export function AuthProvider({ api, children }) {
  const [user, setUser] = useState(null);
  const [status, setStatus] = useState(() => (api.hasSession() ? 'loading' : 'anonymous'));
  const [error, setError] = useState(null);

  const loadMe = useCallback(async () => {
    setStatus('loading');
    setError(null);
    try {
      const me = await api.get('/api/v1/auth/me');
      setUser(me.user);
      setStatus('ready');
    } catch (err) {
      if (err.status === 401) {
        api.clearTokens();
        setUser(null);
        setStatus('anonymous');
      } else {
        setError(err);
        setStatus('error');
      }
    }
  }, [api]);

  useEffect(() => {
    api.onAuthLost = () => {
      setUser(null);
      setStatus('anonymous');
    };
    if (api.hasSession()) loadMe();
    return () => {
      api.onAuthLost = null;
    };
  }, [api, loadMe]);

  const login = useCallback(
    async (email, password) => {
      await api.login(email, password);
      await loadMe();
    },
    [api, loadMe],
  );

  // local: the server already ended the session (e.g. after a password change): only forget the tokens.
  const logout = useCallback(async ({ local = false } = {}) => {
    try {
      if (local) api.clearTokens();
      else await api.logout();
    } catch {
      /* the tokens are gone locally either way */
    }
    setUser(null);
    setStatus('anonymous');
  }, [api]);

  const value = {
    api,
    user,
    status,
    error,
    retry: loadMe,
    login,
    logout,
    canMutate: !!user && user.role !== 'readonly',
  };
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth() {
  return useContext(AuthContext);
}
