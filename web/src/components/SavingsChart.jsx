import { useEffect, useRef } from 'react';
import { BarController, BarElement, CategoryScale, Chart, LinearScale, Tooltip } from 'chart.js';

Chart.register(BarController, BarElement, CategoryScale, LinearScale, Tooltip);

// Dollars saved per day (UTC) as bars; the table under it carries the same numbers for screen readers.
export function SavingsChart({ history }) {
  const canvas = useRef(null);
  const chart = useRef(null);
  useEffect(() => {
    const labels = history.map((d) => new Date(d.day * 1000).toISOString().slice(0, 10));
    const data = history.map((d) => d.dollars);
    if (!chart.current) {
      chart.current = new Chart(canvas.current, {
        type: 'bar',
        data: { labels, datasets: [{ label: 'Saved ($)', data, backgroundColor: '#16a34a', maxBarThickness: 56 }] },
        options: {
          responsive: true,
          maintainAspectRatio: false,
          animation: false,
          scales: { y: { beginAtZero: true, ticks: { callback: (v) => '$' + v } } },
          plugins: { tooltip: { callbacks: { label: (c) => `$${Number(c.raw).toFixed(4)}` } } },
        },
      });
    } else {
      chart.current.data.labels = labels;
      chart.current.data.datasets[0].data = data;
      chart.current.update();
    }
  }, [history]);
  useEffect(
    () => () => {
      chart.current && chart.current.destroy();
      chart.current = null;
    },
    [],
  );
  return (
    <div className="chart-box">
      <canvas ref={canvas} role="img" aria-label="Dollars saved per day by hibernation" />
    </div>
  );
}
