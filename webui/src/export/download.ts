/** Hands a file to the browser's download (an object URL on a temporary link). */

export function saveFile(blob: Blob, fileName: string): void {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = fileName;
  document.body.append(link);
  link.click();
  link.remove();
  // The download has taken its copy once click() returns; a minute is generous for slow disks.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** `scan.pdf` -> `scan.md` (any extension replaced, a name without one extended). */
export function exportName(documentName: string, extension: string): string {
  const dot = documentName.lastIndexOf(".");
  const stem = dot > 0 ? documentName.slice(0, dot) : documentName;
  return `${stem || "document"}.${extension}`;
}
