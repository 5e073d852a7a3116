/** The app's two pieces of state, handed to components by provide/inject. */

import { inject, type InjectionKey } from "vue";
import type { Library } from "./state/library";
import type { SettingsState } from "./state/settings";

export interface AppContext {
  settings: SettingsState;
  library: Library;
}

export const APP: InjectionKey<AppContext> = Symbol("app");

export function useApp(): AppContext {
  const context = inject(APP);
  if (!context) throw new Error("useApp() outside the app: main.ts provides it");
  return context;
}
