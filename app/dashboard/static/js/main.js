// The dashboard's router: #/files, #/new, #/jobs, #/jobs/<id>, #/playground?model=<id>.
// Each page module exports render(root, params) and may return a cleanup function
// (it stops the page's streams and timers when the user moves on).

import { api, forgetKey, getKey, setKey } from "./api.js";
import { h } from "./ui.js";
import * as files from "./files.js";
import * as newJob from "./new_job.js";
import * as jobs from "./jobs.js";
import * as job from "./job.js";
import * as playground from "./playground.js";

const root = document.getElementById("page");
let cleanup = null;

function route() {
  const [path, query = ""] = (location.hash.replace(/^#/, "") || "/files").split("?");
  const params = Object.fromEntries(new URLSearchParams(query));
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) return { page: "jobs", module: job, params: { ...params, id: decodeURIComponent(parts[1]) } };
  const module = { files, new: newJob, jobs, playground }[parts[0]] || files;
  return { page: parts[0] in { files: 1, new: 1, jobs: 1, playground: 1 } ? parts[0] : "files", module, params };
}

function show() {
  if (cleanup) { cleanup(); cleanup = null; }
  root.replaceChildren();
  document.getElementById("forget-key").hidden = !getKey();
  if (!getKey()) return askForKey();
  const { page, module, params } = route();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  document.body.dataset.page = page;
  cleanup = module.render(root, params) || null;
}

function askForKey(message) {
  document.body.dataset.page = "key";
  const input = h("input#api-key", { type: "password", placeholder: "sk-whet-…", autocomplete: "off", required: true });
  const problem = h("div");
  if (message) problem.append(h("div.error", {}, message));
  const form = h("form.card.keybox#key-form", {
    onsubmit: async (e) => {
      e.preventDefault();
      setKey(input.value);
      try {
        await api("/models");
        show();
      } catch (error) {
        forgetKey();
        problem.replaceChildren(h("div.error", {}, error.message));
      }
    },
  },
  h("h1", {}, "API key"),
  h("p.notice", {}, "Enter a key made with ", h("code", {}, "whetstone keys create --project NAME"),
    ". It is kept for this browser tab only (sessionStorage) and sent as a Bearer token."),
  input, problem, h("p", {}, h("button.primary", { type: "submit" }, "Continue")));
  root.replaceChildren(form);
  input.focus();
}

window.addEventListener("hashchange", show);
window.addEventListener("whetstone:unauthorized", (e) => {
  forgetKey();
  if (cleanup) { cleanup(); cleanup = null; }
  askForKey(e.detail.message);
});
document.getElementById("forget-key").addEventListener("click", () => { forgetKey(); show(); });
show();
