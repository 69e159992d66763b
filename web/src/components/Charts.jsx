// chart.js charts: a line chart over time (x = Unix seconds on a linear axis, so no date adapter is
// needed) and a grouped bar chart. The canvas carries a text summary for screen readers; pages also
// show the numbers in tables.
import { useEffect, useRef } from 'react';
import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
} from 'chart.js';

Chart.register(LineController, LineElement, PointElement, BarController, BarElement, CategoryScale, LinearScale, Legend, Tooltip);

export const PALETTE = ['#1d4ed8', '#b45309', '#15803d', '#9333ea', '#be123c', '#0e7490', '#4d7c0f', '#c2410c', '#6d28d9', '#0f766e'];

export function timeLabel(unixSeconds, spanSeconds) {
  const d = new Date(unixSeconds * 1000);
  if (spanSeconds > 2 * 86400) return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' }) + ' ' + d.toLocaleTimeString(undefined, { hour: '2-digit' });
  return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

function useChart(canvas, config, deps) {
  const chart = useRef(null);
  useEffect(() => {
    const cfg = config();
    if (!chart.current) {
      chart.current = new Chart(canvas.current, cfg);
    } else {
      chart.current.data = cfg.data;
      chart.current.options = cfg.options;
      chart.current.update();
    }
  }, deps); // eslint-disable-line react-hooks/exhaustive-deps
  useEffect(
    () => () => {
      if (chart.current) chart.current.destroy();
      chart.current = null;
    },
    [],
  );
}

// series: [{ label, points: [{ t, y }] }]; format: y value -> text (ticks and tooltips).
export function TimeLineChart({ series, label, format = (v) => String(v), height = 260 }) {
  const canvas = useRef(null);
  const ts = series.flatMap((s) => s.points.map((p) => p.t));
  const span = ts.length ? Math.max(...ts) - Math.min(...ts) : 0;
  useChart(
    canvas,
    () => ({
      type: 'line',
      data: {
        datasets: series.map((s, i) => ({
          label: s.label,
          data: s.points.map((p) => ({ x: p.t, y: p.y })),
          borderColor: PALETTE[i % PALETTE.length],
          backgroundColor: PALETTE[i % PALETTE.length],
          pointRadius: s.points.length > 60 ? 0 : 2,
          borderWidth: 2,
          tension: 0.2,
          spanGaps: true,
        })),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        parsing: true,
        interaction: { mode: 'nearest', intersect: false },
        scales: {
          x: { type: 'linear', ticks: { maxTicksLimit: 8, callback: (v) => timeLabel(v, span) } },
          y: { ticks: { callback: (v) => format(v) } },
        },
        plugins: {
          legend: { position: 'bottom', labels: { boxWidth: 12 } },
          tooltip: {
            callbacks: {
              title: (items) => (items.length ? new Date(items[0].parsed.x * 1000).toLocaleString() : ''),
              label: (c) => `${c.dataset.label}: ${format(c.parsed.y)}`,
            },
          },
        },
      },
    }),
    [JSON.stringify(series)],
  );
  return (
    <div className="chart-box" style={{ height }}>
      <canvas ref={canvas} role="img" aria-label={label} />
    </div>
  );
}

// labels: category names; bars: [{ label, values: [number|null] }].
export function BarChart({ labels, bars, label, format = (v) => String(v), height = 260 }) {
  const canvas = useRef(null);
  useChart(
    canvas,
    () => ({
      type: 'bar',
      data: {
        labels,
        datasets: bars.map((b, i) => ({ label: b.label, data: b.values, backgroundColor: b.color || PALETTE[i % PALETTE.length], maxBarThickness: 40 })),
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: { y: { beginAtZero: true, ticks: { callback: (v) => format(v) } } },
        plugins: {
          legend: { position: 'bottom', labels: { boxWidth: 12 } },
          tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${format(c.parsed.y)}` } },
        },
      },
    }),
    [JSON.stringify(labels), JSON.stringify(bars)],
  );
  return (
    <div className="chart-box" style={{ height }}>
      <canvas ref={canvas} role="img" aria-label={label} />
    </div>
  );
}
