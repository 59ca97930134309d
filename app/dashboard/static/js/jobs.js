// Jobs: a table of this project's jobs, refreshed every 2 seconds.

import { api } from "./api.js";
import { badge, errorBox, h, when } from "./ui.js";

export function render(root) {
  const body = h("tbody#jobs-body");
  const problem = h("div");
  async function refresh() {
    try {
      const { data } = await api("/fine_tuning/jobs?limit=100");
      problem.replaceChildren();
      body.replaceChildren(...(data.length ? data.map((job) => h("tr", { dataset: { jobId: job.id, status: job.status } },
        h("td", {}, h("a", { href: `#/jobs/${job.id}` }, h("code", {}, job.id))),
        h("td", {}, badge(job.status)),
        h("td", {}, job.model),
        h("td", {}, job.fine_tuned_model ? h("code", {}, job.fine_tuned_model) : ""),
        h("td.num", {}, job.trained_tokens ?? ""),
        h("td", {}, when(job.created_at)),
        h("td", {}, when(job.finished_at) || (job.estimated_finish ? `~ ${when(job.estimated_finish)}` : ""))))
        : [h("tr", {}, h("td", { colSpan: 7 }, h("span.notice", {}, "No jobs yet: start one under New job.")))]));
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
  }
  root.append(h("div.row", {}, h("h1", {}, "Fine-tuning jobs"), h("a.button", { href: "#/new", style: "margin-left:auto" }, "New job")),
    problem,
    h("table#jobs", {}, h("thead", {}, h("tr", {},
      ...["id", "status", "base model", "fine-tuned model", "trained tokens", "created", "finished"].map((t) => h("th", {}, t)))), body));
  refresh();
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}
