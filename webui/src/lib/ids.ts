/** Random ids for documents. `crypto.randomUUID` exists only in secure contexts, and the local server
 * may be opened over plain http on a LAN address; `getRandomValues` works everywhere. */
export function newId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
