import { nextTick } from "vue";
import { describe, expect, it } from "vitest";
import { DEFAULT_SETTINGS, STORAGE_KEY, createSettings, endpointFor, normalizeSettings } from "../src/state/settings";

/** The part of the browser's Storage that settings use, over a Map (Node has no localStorage). */
class MapStorage implements Pick<Storage, "getItem" | "setItem"> {
  readonly items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
}

describe("settings", () => {
  it("fall back or clamp every unknown or out-of-range stored value", () => {
    expect(normalizeSettings({ target: "ftp", task: "poem", mode: "huge", concurrency: 99, dpi: 10, endpointId: " ab-1 " })).toEqual({
      ...DEFAULT_SETTINGS,
      concurrency: 16,
      dpi: 72,
      endpointId: "ab-1",
    });
    expect(normalizeSettings("garbage")).toEqual(DEFAULT_SETTINGS);
  });

  it("send local jobs to the page's own server, wherever it mounts the app", () => {
    expect(endpointFor(DEFAULT_SETTINGS, "http://127.0.0.1:8000/")).toEqual({ endpoint: { base: "http://127.0.0.1:8000" } });
    expect(endpointFor(DEFAULT_SETTINGS, "https://ocr.example/tools/index.html")).toEqual({ endpoint: { base: "https://ocr.example/tools" } });
  });

  it("send RunPod jobs with the key to api.runpod.ai only, and name what is missing", () => {
    const runpod = { ...DEFAULT_SETTINGS, target: "runpod" as const };
    expect(endpointFor({ ...runpod, endpointId: "abc123", apiKey: "rp_x" }, "http://127.0.0.1:8000/")).toEqual({
      endpoint: { base: "https://api.runpod.ai/v2/abc123", apiKey: "rp_x", maxPayloadBytes: 20_000_000 },
    });
    expect(endpointFor({ ...runpod, endpointId: "", apiKey: "rp_x" }, "http://h/")).toEqual({ problem: expect.stringContaining("endpoint id") });
    expect(endpointFor({ ...runpod, endpointId: "../evil", apiKey: "rp_x" }, "http://h/")).toEqual({ problem: expect.stringContaining("endpoint id") });
    expect(endpointFor({ ...runpod, endpointId: "abc", apiKey: "" }, "http://h/")).toEqual({ problem: expect.stringContaining("API key") });
  });

  it("are written back to storage on every change and read again at start", async () => {
    const storage = new MapStorage();
    const first = createSettings(storage as unknown as Storage, "http://127.0.0.1:8000/");
    first.update({ mode: "tiny", concurrency: 2 });
    await nextTick();
    expect(JSON.parse(storage.getItem(STORAGE_KEY) ?? "{}")).toMatchObject({ mode: "tiny", concurrency: 2 });
    const second = createSettings(storage as unknown as Storage, "http://127.0.0.1:8000/");
    expect(second.values.value).toMatchObject({ mode: "tiny", concurrency: 2 });
  });
});
