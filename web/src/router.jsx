// A minimal client-side router (history API); dumontd answers every non-/api path with index.html.
// `base` mounts the whole app under a prefix: the demo console is the same app at /demo-app/*, where
// path '/machines' is the URL /demo-app/machines. Pages only ever see app paths ('/', '/machines').
import { createContext, useContext, useEffect, useState } from 'react';

export const DEMO_BASE = '/demo-app';

// The base of a URL path: DEMO_BASE for /demo-app and /demo-app/..., else ''.
export function baseOf(pathname) {
  return pathname === DEMO_BASE || pathname.startsWith(DEMO_BASE + '/') ? DEMO_BASE : '';
}

export function appPath(pathname, base) {
  if (!base) return pathname || '/';
  const rest = pathname.slice(base.length);
  return rest === '' ? '/' : rest;
}

const RouterContext = createContext({ path: '/', base: '', navigate: () => {}, href: (to) => to });

export function Router({ base = '', children }) {
  const [path, setPath] = useState(() => appPath(window.location.pathname, base));
  useEffect(() => {
    const onPop = () => setPath(appPath(window.location.pathname, base));
    window.addEventListener('popstate', onPop);
    return () => window.removeEventListener('popstate', onPop);
  }, [base]);
  const href = (to) => base + to;
  const navigate = (to, { replace = false } = {}) => {
    const url = href(to);
    if (url === window.location.pathname) return;
    if (replace) window.history.replaceState(null, '', url);
    else window.history.pushState(null, '', url);
    setPath(to);
    window.scrollTo?.(0, 0);
  };
  return <RouterContext.Provider value={{ path, base, navigate, href }}>{children}</RouterContext.Provider>;
}

export function useRouter() {
  return useContext(RouterContext);
}

export function Link({ to, children, ...rest }) {
  const { path, navigate, href } = useRouter();
  const onClick = (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(to);
  };
  return (
    <a href={href(to)} onClick={onClick} aria-current={path === to ? 'page' : undefined} {...rest}>
      {children}
    </a>
  );
}
