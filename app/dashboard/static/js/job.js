// One job: live train / validation loss chart from the SSE event stream, event log,
// checkpoints, downloads, cancel / pause / resume.

import { api, download, stream } from "./api.js";
import { readEvents } from "./sse.js";
import { badge, errorBox, h, when } from "./ui.js";

const SHOWN_METRICS = { train_loss: "train loss", valid_loss: "valid loss", valid_mean_token_accuracy: "valid accuracy" };
const STEP_INCREMENTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/** The loss chart: x = step; series = training loss and validation loss (uPlot). */
class LossChart {
  constructor(element) {
    this.element = element;
    this.points = new Map(); // step -> {train, valid}
    this.plot = null;
  }

  add(data) {
    if (typeof data.step !== "number") return;
    const point = this.points.get(data.step) || { train: null, valid: null };
    if (typeof data.train_loss === "number") point.train = data.train_loss;
    if (typeof data.valid_loss === "number") point.valid = data.valid_loss;
    if (point.train === null && point.valid === null) return;
    this.points.set(data.step, point);
    this.dirty = true;
  }

  draw() {
    if (!this.dirty) return;
    this.dirty = false;
    const steps = [...this.points.keys()].sort((a, b) => a - b);
    const data = [steps, steps.map((s) => this.points.get(s).train), steps.map((s) => this.points.get(s).valid)];
    const train = data[1].filter((v) => v !== null).length;
    const valid = data[2].filter((v) => v !== null).length;
    this.element.dataset.trainPoints = train;
    this.element.dataset.validPoints = valid;
    this.element.querySelector(".chart-count").textContent =
      `${train} training point${train === 1 ? "" : "s"}, ${valid} validation point${valid === 1 ? "" : "s"}`;
    if (!this.plot) {
      const target = this.element.querySelector(".chart-plot");
      this.plot = new window.uPlot({
        width: Math.max(320, target.clientWidth || 800), height: 280,
        scales: { x: { time: false } },
        axes: [{ label: "step", incrs: STEP_INCREMENTS }, { label: "loss" }],
        series: [{ label: "step" },
          { label: "training loss", stroke: "#2f5bd3", width: 2, points: { show: steps.length < 60 } },
          { label: "validation loss", stroke: "#e07a1f", width: 2, spanGaps: true, points: { show: true, size: 7 } }],
      }, data, target);
    } else {
      this.plot.setData(data);
    }
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: Math.max(320, this.element.clientWidth - 2), height: 280 });
  }
}

export function render(root, { id }) {
  const controller = new AbortController();
  const { signal } = controller;
  const summary = h("div#job-summary");
  const actions = h("div.row#job-actions");
  const problem = h("div#job-problem");
  const streamState = h("span.hint#stream-state", {}, "connecting…");
  const chartBox = h("div.chart#loss-chart", { dataset: { trainPoints: 0, validPoints: 0 } },
    h("div.chart-plot"), h("div.hint.chart-count", {}, "No points yet: the training loss appears every few steps, the validation loss at each epoch end."));
  const chart = new LossChart(chartBox);
  const log = h("div.log#event-log");
  const checkpoints = h("tbody#checkpoints-body");
  let job = null;

  root.append(h("div.row", {}, h("h1", {}, "Job ", h("code", {}, id)), h("a.button", { href: "#/jobs", style: "margin-left:auto" }, "All jobs")),
    problem, h("div.card", {}, summary, h("p"), actions),
    h("div.card", {}, h("div.row", {}, h("h2", { style: "margin:0" }, "Loss"), streamState), chartBox),
    h("div.sides", {},
      h("div.card", {}, h("h2", { style: "margin-top:0" }, "Events"), log),
      h("div.card", {}, h("h2", { style: "margin-top:0" }, "Checkpoints"),
        h("table#checkpoints", {}, h("thead", {}, h("tr", {}, ...["step", "model", "metrics", ""].map((t) => h("th", {}, t)))), checkpoints))));

  const act = (verb) => async () => {
    problem.replaceChildren();
    try { show(await api(`/fine_tuning/jobs/${id}/${verb}`, { method: "POST" })); } catch (error) { problem.replaceChildren(errorBox(error)); }
  };
  const fetching = (path, name) => async () => {
    problem.replaceChildren(h("p.notice", {}, `Preparing ${name}…`));
    try { await download(path, name); problem.replaceChildren(); } catch (error) { problem.replaceChildren(errorBox(error)); }
  };

  function show(next) {
    job = next;
    const ft = job.fine_tuned_model;
    summary.replaceChildren(h("dl.kv", {},
      h("dt", {}, "status"), h("dd#job-status", { dataset: { status: job.status } }, badge(job.status)),
      h("dt", {}, "base model"), h("dd", {}, job.model),
      h("dt", {}, "fine-tuned model"), h("dd", {}, ft ? h("code", {}, ft) : h("span.notice", {}, "when it succeeds")),
      h("dt", {}, "training file"), h("dd", {}, h("code", {}, job.training_file)),
      h("dt", {}, "validation file"), h("dd", {}, job.validation_file ? h("code", {}, job.validation_file) : "none"),
      h("dt", {}, "hyper-parameters"), h("dd", {}, h("code", {}, JSON.stringify(job.hyperparameters))),
      h("dt", {}, "created"), h("dd", {}, when(job.created_at)),
      h("dt", {}, job.finished_at ? "finished" : "estimated finish"),
      h("dd", {}, when(job.finished_at || job.estimated_finish) || "—"),
      job.trained_tokens ? [h("dt", {}, "trained tokens"), h("dd", {}, String(job.trained_tokens))] : null,
      job.error && job.error.message ? [h("dt", {}, "error"), h("dd.error", {}, job.error.message)] : null));
    const done = TERMINAL.has(job.status);
    actions.replaceChildren(
      h("button.danger#cancel-job", { disabled: done, onclick: act("cancel") }, "Cancel"),
      h("button#pause-job", { disabled: !["running", "queued", "validating_files"].includes(job.status), onclick: act("pause") }, "Pause"),
      h("button#resume-job", { disabled: job.status !== "paused", onclick: act("resume") }, "Resume"),
      h("span", { style: "width:16px" }),
      ...job.result_files.map((fileId) => h("button.result-file", { onclick: fetching(`/files/${fileId}/content`, `${fileId}.csv`) },
        "Result file ", h("code", {}, fileId))),
      h("button#download-adapter", { disabled: job.status !== "succeeded", onclick: fetching(`/fine_tuning/jobs/${id}/export?kind=adapter`, `${id}-adapter.zip`) }, "Adapter (.zip)"),
      h("button#download-merged", { disabled: job.status !== "succeeded", onclick: fetching(`/fine_tuning/jobs/${id}/export?kind=merged`, `${id}-merged.zip`) }, "Merged model (.zip)"),
      ...(ft ? [h("a.button#try-model", { href: `#/playground?model=${encodeURIComponent(ft)}` }, "Try it in the playground")] : []));
  }

  async function refresh() {
    try {
      show(await api(`/fine_tuning/jobs/${id}`, { signal }));
      const { data } = await api(`/fine_tuning/jobs/${id}/checkpoints?limit=100`, { signal });
      checkpoints.replaceChildren(...(data.length ? data.map((c) => h("tr", {},
        h("td.num", {}, String(c.step_number)), h("td", {}, h("code", {}, c.fine_tuned_model_checkpoint)),
        h("td", {}, h("code", {}, Object.entries(SHOWN_METRICS).filter(([k]) => k in c.metrics).map(([k, label]) => `${label} ${Number(c.metrics[k]).toFixed(4)}`).join("\n"))),
        h("td", {}, h("a.button", { href: `#/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, "Try"))))
        : [h("tr", {}, h("td", { colSpan: 4 }, h("span.notice", {}, "None yet: one per epoch.")))]));
    } catch (error) {
      if (!signal.aborted) problem.replaceChildren(errorBox(error));
    }
  }

  // Every read of the job goes through here, one at a time (a read asked for meanwhile follows it).
  // A lifecycle event (files validated, started, a checkpoint, finished) changes what the summary
  // shows, so it reads the job again at once, not only at the next poll.
  let refreshing = null, again = false;
  function refreshSoon() {
    if (refreshing) { again = true; return; }
    refreshing = refresh().finally(() => {
      refreshing = null;
      if (again) { again = false; refreshSoon(); }
    });
  }

  function addEvent(event) {
    if (event.type === "metrics" && event.data) chart.add(event.data);
    else refreshSoon();
    log.prepend(h(`div.${event.level}`, { dataset: { eventType: event.type } },
      `${new Date(event.created_at * 1000).toLocaleTimeString()}  ${event.message}`));
  }

  // Follow the SSE stream; on a dropped connection, resume after the last event seen (Last-Event-ID).
  async function follow() {
    let lastEventId = null;
    while (!signal.aborted) {
      try {
        const response = await stream(`/fine_tuning/jobs/${id}/events?stream=true`, { signal, lastEventId });
        streamState.textContent = "live";
        for await (const message of readEvents(response)) {
          if (message.data === "[DONE]") {
            streamState.textContent = "finished";
            chart.draw();
            refreshSoon();
            return;
          }
          if (message.id) lastEventId = message.id;
          addEvent(JSON.parse(message.data));
        }
      } catch (error) {
        if (signal.aborted) return;
        if (error.status && error.status < 500) { problem.replaceChildren(errorBox(error)); streamState.textContent = "stopped"; return; }
      }
      streamState.textContent = "reconnecting…";
      await sleep(1000, signal);
    }
  }

  // Draw at most a few times a second however fast events come; poll the job while it runs.
  const drawTimer = setInterval(() => chart.draw(), 250);
  const pollTimer = setInterval(() => { if (!job || !TERMINAL.has(job.status)) refreshSoon(); }, 2000);
  const onResize = () => chart.resize();
  window.addEventListener("resize", onResize);
  refreshSoon();
  follow();
  return () => {
    controller.abort();
    clearInterval(drawTimer);
    clearInterval(pollTimer);
    window.removeEventListener("resize", onResize);
  };
}
