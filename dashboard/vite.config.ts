// Builds the dashboard into dist/, which the gateway serves at /ui (gateway/envoy.yaml).
import { defineConfig } from "vite";

export default defineConfig({
  // Every URL in the built index.html starts with /ui/: the page is served at /ui and /ui/.
  base: "/ui/",
  // Preact's JSX runtime; no Babel and no framework plugin needed.
  oxc: {
    jsx: { runtime: "automatic", importSource: "preact" },
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // Envoy serves only what its route allows: index.html and the hashed files in assets/.
    assetsDir: "assets",
    // Inline nothing as data: URLs and keep one stylesheet, so the served files are few.
    assetsInlineLimit: 0,
    target: "es2022",
    sourcemap: false,
  },
  server: {
    // `npm run dev` proxies the API to a running `make run` gateway.
    proxy: {
      "/jobs.v1.JobService": "http://localhost:8000",
    },
  },
});
