/// <reference types="vitest/config" />
// Build and test configuration. `npm run dev` proxies the job routes to a local worker server
// (python -m worker.server), at OCR_SERVER or http://127.0.0.1:8000.
import { defineConfig } from "vite";
import vue from "@vitejs/plugin-vue";

const server = process.env.OCR_SERVER ?? "http://127.0.0.1:8000";

export default defineConfig({
  // Relative asset paths: the app works wherever the server mounts it, not only at "/".
  base: "./",
  plugins: [vue()],
  worker: { format: "es" },
  build: {
    target: "es2022",
    // pdf.js is one large module by nature; it loads in the render worker, not on the page.
    chunkSizeWarningLimit: 1500,
    // Rolldown's hint about slow plugins fires on a busy 2-core CI machine and says nothing actionable.
    rolldownOptions: { checks: { bundlerTimings: false } },
  },
  server: {
    proxy: {
      "/runsync": server,
      "/status": server,
    },
  },
  test: {
    environment: "node",
    include: ["tests/**/*.test.ts"],
  },
});
