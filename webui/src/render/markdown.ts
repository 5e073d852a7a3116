/**
 * The one markdown reading of page results, shared by the page view (safe HTML) and the Word exporter
 * (tokens). DeepSeek-OCR writes tables as HTML `<table>` and equations as LaTeX `\[ ... \]` / `\( ... \)`;
 * plain markdown would eat the backslashes, so a `math` rule keeps them verbatim. Figures are linked
 * by name (`![image](page-1-figure-1.png)`) and resolved to the job's PNG crops.
 */

import DOMPurify from "dompurify";
import markdownIt, { type MarkdownIt } from "markdown-it";
import type { Figure } from "../api/protocol";

const OPENERS: Record<string, string> = { "\\[": "\\]", "\\(": "\\)" };

/** markdown-it with raw HTML on (the model's tables), no linkify or typography, and the math rule. */
export function createMarkdownIt(): MarkdownIt {
  const md = markdownIt({ html: true, linkify: false, typographer: false });
  md.inline.ruler.before("escape", "math", (state, silent) => {
    const opener = state.src.slice(state.pos, state.pos + 2);
    const closer = OPENERS[opener];
    if (!closer) return false;
    const end = state.src.indexOf(closer, state.pos + 2);
    if (end < 0) return false;
    if (!silent) {
      const token = state.push("math", "", 0);
      token.content = state.src.slice(state.pos, end + 2);
      token.markup = opener;
    }
    state.pos = end + 2;
    return true;
  });
  md.renderer.rules.math = (tokens, idx) => `<code class="math">${md.utils.escapeHtml(tokens[idx].content)}</code>`;
  return md;
}

const md = createMarkdownIt();

export function figureDataUrl(figure: Figure): string {
  return `data:image/png;base64,${figure.png_base64}`;
}

/** Page markdown -> sanitized HTML for display, with figure links pointing at the job's crops. */
export function renderPageHtml(markdown: string, figures: Figure[] = []): string {
  const byName = new Map(figures.map((figure) => [figure.name, figureDataUrl(figure)]));
  const html = md.render(markdown, { figures: byName });
  return DOMPurify.sanitize(html, { USE_PROFILES: { html: true } });
}

md.renderer.rules.image = (tokens, idx, options, env, self) => {
  const token = tokens[idx];
  const src = String(token.attrGet("src") ?? "");
  const resolved = (env as { figures?: Map<string, string> } | undefined)?.figures?.get(src);
  if (resolved) token.attrSet("src", resolved);
  return self.renderToken(tokens, idx, options);
};
