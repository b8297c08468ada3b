// Build configuration: a static single-page app that the api serves from `console/dist`.
// Everything (scripts, styles, fonts) is bundled, so the console makes no request that leaves
// the machine. `MPL_API` points the dev server's proxy at a running api.
import { defineConfig } from 'vite';

const api = process.env.MPL_API ?? 'http://127.0.0.1:8080';

export default defineConfig({
  base: '/',
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: { outDir: 'dist', sourcemap: true, chunkSizeWarningLimit: 800 },
  server: {
    proxy: {
      '/v1': { target: api, changeOrigin: false },
      '/openapi.json': api,
    },
  },
});
