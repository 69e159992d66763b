export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return '—';
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function age(unixSeconds, nowMs = Date.now()) {
  if (!unixSeconds) return '—';
  return duration(nowMs / 1000 - unixSeconds) + ' ago';
}

export function bytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function money(n, digits = 2) {
  if (n == null || !isFinite(n)) return '—';
  const d = Math.abs(n) > 0 && Math.abs(n) < 0.01 ? 4 : digits;
  return '$' + Number(n).toFixed(d);
}

export function hours(n) {
  if (n == null || !isFinite(n)) return '—';
  return duration(n * 3600);
}

export function dateTime(unixSeconds) {
  if (!unixSeconds) return '—';
  return new Date(unixSeconds * 1000).toLocaleString();
}

export function time(ms) {
  if (!ms) return '—';
  return new Date(ms).toLocaleTimeString();
}

// A 0..1 fraction as a whole percentage.
export function pct(x) {
  return x == null || !isFinite(x) ? '—' : `${Math.round(x * 100)} %`;
}

// Seconds: two decimals under one ("0.02 s"), one under a minute ("3.4 s"), else duration().
export function seconds(s) {
  if (s == null || !isFinite(s)) return '—';
  if (s < 1) return `${Number(s).toFixed(2)} s`;
  return s < 60 ? `${Number(s).toFixed(1)} s` : duration(s);
}
