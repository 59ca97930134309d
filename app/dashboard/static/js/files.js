// Files: list, drag-and-drop upload with progress, line-level validation errors, delete.

import { api, download, getKey, uploadFile } from "./api.js";
import { bytes, errorBox, h, linesView, when } from "./ui.js";

const LINE = /\bline (\d+)\b/;

export function render(root) {
  const progress = h("progress#upload-progress", { max: 1, value: 0, hidden: true });
  const status = h("div#upload-status");
  const chooser = h("input#file-input", { type: "file", accept: ".jsonl,.json,.txt", hidden: true,
    onchange: () => chooser.files[0] && send(chooser.files[0]) });
  const zone = h("div.dropzone#dropzone", { onclick: () => chooser.click() },
    h("strong", {}, "Drop a JSONL file here"), " or click to choose one.",
    h("div.hint", {}, "Chat format ({\"messages\": [...]}) or {\"prompt\", \"completion\"}; checked line by line on upload."));
  for (const type of ["dragenter", "dragover"]) zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
  });
  const table = h("tbody#files-body");
  const details = h("div#file-details");

  async function send(file) {
    progress.hidden = false;
    progress.value = 0;
    status.replaceChildren(h("span.notice", {}, `Uploading ${file.name} (${bytes(file.size)})…`));
    try {
      const uploaded = await uploadFile(file, "fine-tune", (fraction) => { progress.value = fraction; });
      progress.value = 1;
      status.replaceChildren(h("span", {}, "Uploaded ", h("code", {}, uploaded.id), ` (${uploaded.filename}).`));
      await refresh();
    } catch (error) {
      progress.hidden = true;
      const box = h("div#upload-error", {}, errorBox(error));
      const line = LINE.exec(error.message);
      if (line) { // show the offending line of the file as the user has it
        const text = await file.text();
        box.append(linesView(text, new Map([[Number(line[1]), { message: error.message.slice(line.index + line[0].length).replace(/^:\s*/, ""), severity: "error" }]])));
      }
      status.replaceChildren(box);
    }
    chooser.value = "";
  }

  async function validate(file) {
    details.replaceChildren(h("p.notice", {}, `Checking ${file.filename}…`));
    try {
      const [result, content] = await Promise.all([
        api(`/files/${file.id}/validate`, { method: "POST", body: {} }),
        fetchContent(file.id),
      ]);
      const marks = new Map();
      for (const finding of result.findings) {
        for (const where of finding.where) {
          const line = LINE.exec(where);
          if (line && !marks.has(Number(line[1]))) marks.set(Number(line[1]), finding);
        }
      }
      details.replaceChildren(h("div.card#validation", {},
        h("h2", {}, `${file.filename}: ${result.valid ? "valid" : "not valid"}`, " ",
          h("span.hint", {}, `${result.n_examples ?? "?"} examples, ${result.format ?? "unknown"} format`)),
        result.findings.length ? result.findings.map((f) => h(`div.finding.${f.severity}`, {},
          h("b", {}, `${f.severity} · ${f.check}: `), f.message, f.fix ? h("span.hint", {}, ` (prepare-data would ${f.fix})`) : null))
          : h("p", {}, "No findings."),
        marks.size ? linesView(content, marks) : null));
    } catch (error) {
      details.replaceChildren(errorBox(error));
    }
  }

  async function fetchContent(id) {
    const response = await fetch(`/v1/files/${id}/content`, { headers: { Authorization: `Bearer ${getKey()}` } });
    return response.ok ? response.text() : "";
  }

  async function refresh() {
    try {
      const { data } = await api("/files?limit=200");
      table.replaceChildren(...(data.length ? data.map(row) : [h("tr", {}, h("td", { colSpan: 6 }, h("span.notice", {}, "No files yet.")))]));
    } catch (error) {
      table.replaceChildren(h("tr", {}, h("td", { colSpan: 6 }, errorBox(error))));
    }
  }

  function row(file) {
    return h("tr", { dataset: { fileId: file.id } },
      h("td", {}, h("code", {}, file.id)), h("td", {}, file.filename), h("td", {}, file.purpose),
      h("td.num", {}, bytes(file.bytes)), h("td", {}, when(file.created_at)),
      h("td", {}, h("div.row", {},
        file.purpose === "fine-tune" ? h("button.validate", { onclick: () => validate(file) }, "Validate") : null,
        h("button", { onclick: () => download(`/files/${file.id}/content`, file.filename) }, "Download"),
        h("button.danger.delete", { onclick: async () => {
          if (!confirm(`Delete ${file.filename} (${file.id})?`)) return;
          try { await api(`/files/${file.id}`, { method: "DELETE" }); } catch (error) { details.replaceChildren(errorBox(error)); }
          await refresh();
        } }, "Delete"))));
  }

  root.append(h("h1", {}, "Files"),
    h("div.card", {}, zone, chooser,
      h("p"), progress, status),
    details,
    h("table#files", {}, h("thead", {}, h("tr", {}, ...["id", "name", "purpose", "size", "created", ""].map((t) => h("th", {}, t)))), table));
  refresh();
}
