/**
 * Start-up: settings from localStorage, the IndexedDB store, the render worker, the library (which
 * resumes unfinished work), and the Vue app. Changes of endpoint or concurrency restart the scheduler.
 */

import { createApp, watch } from "vue";
import App from "./App.vue";
import { APP } from "./context";
import { WorkerRasterizer } from "./pdf/rasterizer";
import { OcrDatabase } from "./state/db";
import { Library } from "./state/library";
import { createSettings } from "./state/settings";
import "./style.css";

const settings = createSettings(localStorage, location.href);
const library = new Library({
  db: new OcrDatabase(),
  rasterizer: new WorkerRasterizer(new Worker(new URL("./pdf/render.worker.ts", import.meta.url), { type: "module" })),
  target: () => settings.target.value,
  concurrency: () => settings.values.value.concurrency,
});

watch([settings.target, () => settings.values.value.concurrency], () => library.pump());

createApp(App).provide(APP, { settings, library }).mount("#app");
void library.load();
