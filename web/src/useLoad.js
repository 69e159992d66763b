import { useCallback, useEffect, useRef, useState } from 'react';

// Runs an async loader when `key` changes (and when enabled); keeps the last data while reloading.
export function useLoad(loader, key, enabled = true) {
  const [state, setState] = useState({ data: null, error: null, loading: enabled });
  const seq = useRef(0);
  const loaderRef = useRef(loader);
  loaderRef.current = loader;

  const reload = useCallback(async () => {
    const n = ++seq.current;
    setState((s) => ({ ...s, loading: true }));
    try {
      const data = await loaderRef.current();
      if (n === seq.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (n === seq.current) setState((s) => ({ data: s.data, error, loading: false }));
    }
  }, []);

  useEffect(() => {
    if (enabled) reload();
  }, [key, enabled, reload]);

  return { ...state, reload };
}
