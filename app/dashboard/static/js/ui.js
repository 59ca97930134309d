// Small DOM helpers shared by the pages.

/** h("div.card#x", {onclick}, child, ...) -> element. Strings become text nodes (never HTML). */
export function h(tag, attrs = {}, ...children) {
  const [, name = "div", rest = ""] = /^([a-z0-9]*)(.*)$/i.exec(tag);
  const el = document.createElement(name || "div");
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === ".") el.classList.add(part.slice(1)); else el.id = part.slice(1);
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && key !== "list") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "");

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}

export const badge = (status) => h(`span.badge.${status}`, {}, status);

export function errorBox(error) {
  return h("div.error", { role: "alert" }, error.message || String(error));
}

/**
 * Show numbered lines of a text with the offending ones marked, and a few lines around them.
 * marks: Map(lineNumber -> {message, severity: "error"|"warning"}).
 */
export function linesView(text, marks, context = 2) {
  const lines = text.split(/\r?\n/);
  if (lines.length && lines[lines.length - 1] === "") lines.pop();
  const shown = new Set();
  for (const n of marks.keys()) {
    for (let i = Math.max(1, n - context); i <= Math.min(lines.length || n, n + context); i++) shown.add(i);
    shown.add(n);
  }
  const box = h("div.lines");
  let previous = 0;
  for (const n of [...shown].sort((a, b) => a - b)) {
    if (n > previous + 1) box.append(h("div.gap", {}, "…"));
    const mark = marks.get(n);
    const cls = mark ? (mark.severity === "warning" ? ".warn" : ".bad") : "";
    const text = n <= lines.length ? lines[n - 1] : "";
    box.append(h(`div.line${cls}`, { dataset: { line: n } }, h("span.no", {}, String(n)),
      h("span.text", { title: text }, text.length > 400 ? text.slice(0, 400) + " …" : text)));
    if (mark) box.append(h(`span.why${mark.severity === "warning" ? ".warn" : ""}`, {}, `↑ ${mark.message}`));
    previous = n;
  }
  return box;
}
