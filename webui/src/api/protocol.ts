/**
 * The shapes the worker's job API speaks (README "Input", "Output", "Layout output"), as far as the UI
 * reads them. A job output is kept verbatim for the JSON export; these types only name what the UI uses.
 */

export const TASKS = ["markdown", "layout", "ocr"] as const;
export type Task = (typeof TASKS)[number];

export const MODES = ["tiny", "small", "base", "large", "gundam"] as const;
export type Mode = (typeof MODES)[number];

/** The job input for one page: the image as plain base64, never a URL (the browser holds the file). */
export interface PageJobInput {
  image: string;
  task: Task;
  mode: Mode;
  include_figures?: boolean;
}

/** A box in pixels of the page image the worker decoded; `norm` is the model's own 0..999 box. */
export interface Box {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
  norm?: number[];
}

export interface Block {
  index?: number;
  label: string;
  content: string;
  boxes: Box[];
  grounded?: boolean;
  truncated?: boolean;
}

export interface Figure {
  name: string;
  block_index?: number;
  box?: Box;
  png_base64: string;
}

export interface PageFailure {
  code: string;
  message: string;
}

export interface PageOutput {
  type?: "page";
  page: number;
  width?: number;
  height?: number;
  markdown?: string;
  text?: string;
  blocks?: Block[];
  figures?: Figure[];
  finish_reason?: string;
  failure?: PageFailure;
  warnings?: { code: string; message: string }[];
  [key: string]: unknown;
}

export interface DocumentOutput {
  type: "document";
  markdown?: string;
  text?: string;
  pages: PageOutput[];
  [key: string]: unknown;
}

/** The text of a page: `markdown` for the markdown and layout tasks, `text` otherwise. */
export function pageContent(page: PageOutput): string {
  return page.markdown ?? page.text ?? "";
}
