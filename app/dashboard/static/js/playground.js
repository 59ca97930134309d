// Playground: one prompt to two models side by side (base and fine-tune), both streaming
// from /v1/chat/completions with stream=true.

import { api, stream } from "./api.js";
import { readEvents } from "./sse.js";
import { errorBox, h } from "./ui.js";

function side(name, title) {
  const select = h(`select#${name}-model`);
  const answer = h(`div.answer#${name}-answer`, { dataset: { state: "idle" } });
  const stats = h(`div.hint#${name}-stats`);
  return { select, answer, stats, box: h("div.card", {}, h("label", { htmlFor: `${name}-model` }, title), select, h("p"), answer, stats) };
}

async function ask(one, messages, settings, signal) {
  one.answer.replaceChildren();
  one.answer.dataset.state = "streaming";
  one.stats.textContent = "";
  const started = performance.now();
  let chunks = 0, firstAt = null;
  try {
    const response = await stream("/chat/completions", { method: "POST", signal,
      body: { model: one.select.value, messages, stream: true, ...settings } });
    for await (const message of readEvents(response)) {
      if (message.data === "[DONE]") break;
      const chunk = JSON.parse(message.data);
      if (chunk.error) throw new Error(chunk.error.message);
      const text = chunk.choices?.[0]?.delta?.content;
      if (text) {
        firstAt ??= performance.now();
        chunks += 1;
        one.answer.append(text);
      }
    }
    one.answer.dataset.state = "done";
    const seconds = (performance.now() - started) / 1000;
    one.stats.textContent = `${chunks} chunks in ${seconds.toFixed(1)} s` +
      (firstAt ? `, first after ${((firstAt - started) / 1000).toFixed(2)} s` : "");
  } catch (error) {
    if (signal.aborted) return;
    one.answer.dataset.state = "error";
    one.answer.replaceChildren(errorBox(error));
  }
}

export function render(root, params) {
  let controller = new AbortController();
  const left = side("base", "Base model");
  const right = side("tuned", "Fine-tuned model");
  const system = h("input#system-prompt", { placeholder: "optional system message", style: "width:100%" });
  const prompt = h("textarea#prompt", { placeholder: "Ask both models the same thing…" });
  const maxTokens = h("input#max-tokens", { type: "number", value: 64, min: 1, style: "width:90px" });
  const temperature = h("input#temperature", { type: "number", value: 0, min: 0, max: 2, step: "0.1", style: "width:90px" });
  const problem = h("div");
  const send = h("button.primary#send-prompt", { type: "submit" }, "Send to both");
  const form = h("form.card#playground-form", { onsubmit: async (e) => {
    e.preventDefault();
    controller.abort();
    controller = new AbortController();
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push({ role: "user", content: prompt.value });
    const settings = { max_tokens: Number(maxTokens.value) || 64, temperature: Number(temperature.value) || 0 };
    send.disabled = true;
    await Promise.all([left, right].map((one) => ask(one, messages, settings, controller.signal)));
    send.disabled = false;
  } },
  h("label", { htmlFor: "system-prompt" }, "System"), system, h("p"),
  h("label", { htmlFor: "prompt" }, "Prompt"), prompt,
  h("div.row", {}, h("label", { htmlFor: "max-tokens" }, "max_tokens"), maxTokens,
    h("label", { htmlFor: "temperature" }, "temperature"), temperature, h("span", { style: "flex:1" }), send));

  root.append(h("h1", {}, "Playground"), problem, form, h("div.sides", {}, left.box, right.box));

  (async () => {
    try {
      const { data } = await api("/models");
      const bases = data.filter((m) => m.owned_by === "whetstone").map((m) => m.id);
      const tuned = data.filter((m) => m.owned_by !== "whetstone").map((m) => m.id);
      const wanted = params.model;
      const base = wanted && wanted.startsWith("ft:") ? wanted.split(":")[1] : bases[0];
      left.select.replaceChildren(...bases.map((id) => h("option", { value: id, selected: id === base }, id)));
      const rightChoices = [...tuned, ...bases];
      if (wanted && !rightChoices.includes(wanted)) rightChoices.unshift(wanted); // a checkpoint id
      right.select.replaceChildren(...rightChoices.map((id) => h("option", { value: id, selected: id === (wanted || tuned[0]) }, id)));
      if (!tuned.length && !wanted) problem.replaceChildren(h("p.notice", {}, "No fine-tuned model yet: both sides can be base models."));
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
  })();
  return () => controller.abort();
}
