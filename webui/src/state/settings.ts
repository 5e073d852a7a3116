/**
 * The user's settings: where jobs go (this page's own server, or a RunPod endpoint with its API key),
 * the task, mode and render resolution of new documents, and how many page jobs run at once.
 * Kept in localStorage: the API key never leaves the browser except in requests to RunPod itself.
 */

import { computed, ref, watch, type ComputedRef, type Ref } from "vue";
import type { Endpoint } from "../api/client";
import { MODES, TASKS, type Mode, type Task } from "../api/protocol";

export type Target = "local" | "runpod";

export interface Settings {
  target: Target;
  endpointId: string;
  apiKey: string;
  task: Task;
  mode: Mode;
  concurrency: number;
  dpi: number;
}

export const STORAGE_KEY = "deepseek-ocr-webui.settings";
export const RUNPOD_API = "https://api.runpod.ai/v2";
// RunPod refuses /runsync bodies over 20 MB (base64 adds a third to the image).
export const RUNPOD_RUNSYNC_LIMIT = 20 * 1000 * 1000;
// The worker's PDF_DPI default and MAX_PDF_DPI bound; 144 is the official pipelines' value.
export const DPI_DEFAULT = 144;
export const DPI_RANGE = [72, 300] as const;
// The worker batches up to BATCH_SIZE (8) pages; more jobs in flight only queue on its side.
export const CONCURRENCY_RANGE = [1, 16] as const;
const ENDPOINT_ID = /^[A-Za-z0-9_-]+$/;

export const DEFAULT_SETTINGS: Settings = {
  target: "local",
  endpointId: "",
  apiKey: "",
  task: "markdown",
  mode: "gundam",
  concurrency: 4,
  dpi: DPI_DEFAULT,
};

/** Any stored value -> valid settings: unknown or out-of-range values fall back or are clamped. */
export function normalizeSettings(raw: unknown): Settings {
  const value = (typeof raw === "object" && raw !== null ? raw : {}) as Partial<Record<keyof Settings, unknown>>;
  const pick = <T>(candidate: unknown, allowed: readonly T[], fallback: T): T =>
    allowed.includes(candidate as T) ? (candidate as T) : fallback;
  const clamp = (candidate: unknown, [low, high]: readonly [number, number], fallback: number): number =>
    typeof candidate === "number" && Number.isFinite(candidate) ? Math.min(high, Math.max(low, Math.round(candidate))) : fallback;
  return {
    target: pick(value.target, ["local", "runpod"] as const, DEFAULT_SETTINGS.target),
    endpointId: typeof value.endpointId === "string" ? value.endpointId.trim() : "",
    apiKey: typeof value.apiKey === "string" ? value.apiKey.trim() : "",
    task: pick(value.task, TASKS, DEFAULT_SETTINGS.task),
    mode: pick(value.mode, MODES, DEFAULT_SETTINGS.mode),
    concurrency: clamp(value.concurrency, CONCURRENCY_RANGE, DEFAULT_SETTINGS.concurrency),
    dpi: clamp(value.dpi, DPI_RANGE, DEFAULT_SETTINGS.dpi),
  };
}

/**
 * Settings -> the endpoint jobs go to, or the reason there is none yet. `pageUrl` is the page's own
 * address: the local server serves this app and its job routes from the same place.
 */
export function endpointFor(settings: Settings, pageUrl: string): { endpoint: Endpoint } | { problem: string } {
  if (settings.target === "local") {
    const base = new URL(".", pageUrl).href.replace(/\/$/, "");
    return { endpoint: { base } };
  }
  if (!ENDPOINT_ID.test(settings.endpointId)) return { problem: "Enter the RunPod endpoint id (letters, digits, - and _)." };
  if (!settings.apiKey) return { problem: "Enter a RunPod API key." };
  return {
    endpoint: { base: `${RUNPOD_API}/${settings.endpointId}`, apiKey: settings.apiKey, maxPayloadBytes: RUNPOD_RUNSYNC_LIMIT },
  };
}

function readStored(storage: Storage | undefined): Settings {
  if (!storage) return { ...DEFAULT_SETTINGS };
  try {
    return normalizeSettings(JSON.parse(storage.getItem(STORAGE_KEY) ?? "{}"));
  } catch {
    // A damaged entry: start from the defaults rather than refusing to start.
    return { ...DEFAULT_SETTINGS };
  }
}

export interface SettingsState {
  values: Ref<Settings>;
  /** Where jobs go now, or why nowhere yet. */
  target: ComputedRef<{ endpoint: Endpoint } | { problem: string }>;
  update(patch: Partial<Settings>): void;
}

/** Reactive settings read from `storage` and written back on every change. */
export function createSettings(storage: Storage | undefined, pageUrl: string): SettingsState {
  const values = ref<Settings>(readStored(storage));
  watch(values, (next) => storage?.setItem(STORAGE_KEY, JSON.stringify(next)), { deep: true });
  const target = computed(() => endpointFor(values.value, pageUrl));
  return {
    values,
    target,
    update(patch) {
      values.value = normalizeSettings({ ...values.value, ...patch });
    },
  };
}
