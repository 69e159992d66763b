import { defineConfig } from 'vite';

// No React plugin: esbuild's automatic JSX runtime is all this app needs (no fast refresh in dev).
export default defineConfig({
  base: '/',
  esbuild: { jsx: 'automatic' },
  build: { outDir: 'dist', assetsDir: 'assets', chunkSizeWarningLimit: 600 },
  server: {
    // `npm run dev` against a running dumontd (default the one on :18900).
    proxy: { '/api': process.env.DUMONT_API_URL || 'http://127.0.0.1:18900' },
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.{js,jsx}'],
    restoreMocks: true,
  },
});
