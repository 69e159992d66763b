import { describe, expect, it } from 'vitest';
import { HIBERNATION_KEY, loadHibernationDefaults, saveHibernationDefaults, SERVER_HIBERNATION, validateHibernation } from './prefs.js';

function memoryStorage(init = {}) {
  const m = new Map(Object.entries(init));
  return { getItem: (k) => (m.has(k) ? m.get(k) : null), setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k) };
}

describe('hibernation defaults (localStorage)', () => {
  it('are the server defaults until saved', () => {
    expect(loadHibernationDefaults(memoryStorage())).toEqual({ ...SERVER_HIBERNATION, saved: false });
  });

  it('round-trip through storage as numbers', () => {
    const s = memoryStorage();
    const r = saveHibernationDefaults({ enabled: true, gpu_threshold_pct: '7.5', idle_seconds: '600', release_after_seconds: '0' }, s);
    expect(r.error).toBeUndefined();
    expect(JSON.parse(s.getItem(HIBERNATION_KEY))).toEqual({ enabled: true, gpu_threshold_pct: 7.5, idle_seconds: 600, release_after_seconds: 0 });
    expect(loadHibernationDefaults(s)).toEqual({ enabled: true, gpu_threshold_pct: 7.5, idle_seconds: 600, release_after_seconds: 0, saved: true });
  });

  it('refuse bad values and name the field; ignore corrupt storage', () => {
    expect(validateHibernation({ ...SERVER_HIBERNATION, gpu_threshold_pct: '101' }).error.field).toBe('gpu_threshold_pct');
    expect(validateHibernation({ ...SERVER_HIBERNATION, idle_seconds: '1.5' }).error.field).toBe('idle_seconds');
    expect(validateHibernation({ ...SERVER_HIBERNATION, release_after_seconds: '-1' }).error.field).toBe('release_after_seconds');
    expect(loadHibernationDefaults(memoryStorage({ [HIBERNATION_KEY]: '{not json' })).saved).toBe(false);
  });
});
