// Preferences kept in this browser (localStorage), not on the server: the default hibernation
// thresholds the deploy wizard and the new-machine form start from. Settings edits them.

export const HIBERNATION_KEY = 'dumont.hibernation_defaults';
// The server's own defaults (docs/fleet.md): 5 % for 180 s, release the snapshot's disk after 30 min.
export const SERVER_HIBERNATION = { enabled: true, gpu_threshold_pct: 5, idle_seconds: 180, release_after_seconds: 1800 };

function storage() {
  try {
    return globalThis.localStorage || null;
  } catch {
    return null;
  }
}

// Checks and normalises; returns { value } or { error: { field, message } }.
export function validateHibernation(h) {
  const out = { enabled: !!h.enabled };
  const thr = Number(h.gpu_threshold_pct);
  if (String(h.gpu_threshold_pct).trim() === '' || !Number.isFinite(thr) || thr < 0 || thr > 100) {
    return { error: { field: 'gpu_threshold_pct', message: 'The GPU threshold must be a number from 0 to 100 %.' } };
  }
  const idle = Number(h.idle_seconds);
  if (!Number.isInteger(idle) || idle < 1) {
    return { error: { field: 'idle_seconds', message: 'Idle time must be a whole number of seconds, at least 1.' } };
  }
  const rel = Number(h.release_after_seconds);
  if (!Number.isInteger(rel) || rel < 0) {
    return { error: { field: 'release_after_seconds', message: 'Release after must be a whole number of seconds (0 or more).' } };
  }
  out.gpu_threshold_pct = thr;
  out.idle_seconds = idle;
  out.release_after_seconds = rel;
  return { value: out };
}

export function loadHibernationDefaults(store = storage()) {
  try {
    const raw = store && store.getItem(HIBERNATION_KEY);
    if (!raw) return { ...SERVER_HIBERNATION, saved: false };
    const v = validateHibernation({ ...SERVER_HIBERNATION, ...JSON.parse(raw) });
    return v.value ? { ...v.value, saved: true } : { ...SERVER_HIBERNATION, saved: false };
  } catch {
    return { ...SERVER_HIBERNATION, saved: false };
  }
}

export function saveHibernationDefaults(h, store = storage()) {
  const v = validateHibernation(h);
  if (v.error) return v;
  if (!store) return { error: { message: 'This browser does not let the page store settings.' } };
  store.setItem(HIBERNATION_KEY, JSON.stringify(v.value));
  return v;
}

export function resetHibernationDefaults(store = storage()) {
  if (store) store.removeItem(HIBERNATION_KEY);
}
