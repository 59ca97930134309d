// New job: base model, method, hyper-parameters (empty = "auto", explained), files.

import { api } from "./api.js";
import { errorBox, h } from "./ui.js";

// What the API accepts (app/protocol/fine_tuning.py); the text is README's "auto" table.
export const METHODS = {
  lora: { label: "LoRA", extra: {}, hint: "Low-rank adapters on every attention and MLP projection; the base weights stay frozen." },
  dora: { label: "DoRA", extra: { use_dora: true }, hint: "Weight-decomposed LoRA (use_dora): magnitude and direction learned apart." },
  qlora: { label: "QLoRA (4-bit NF4)", extra: { quantization: "nf4" }, hint: "LoRA on a 4-bit NF4 base with double quantization (quantization=nf4)." },
  int8: { label: "LoRA on an 8-bit base", extra: { quantization: "int8" }, hint: "LoRA over bitsandbytes int8 base weights (quantization=int8)." },
};

const BASIC = [
  ["n_epochs", "int", "auto: 3; when 3 × examples < 100, min(25, ceil(100 / examples)) (OpenAI's rule)", "1 – 50"],
  ["batch_size", "int", "auto: max(1, min(256, round(0.002 × examples)))", "1 – 256"],
  ["learning_rate_multiplier", "float", "auto: 1.0 × the LoRA base rate 1e-3, linear warm-up (10 %) then linear decay", "> 0 – 10"],
];
const ADVANCED = [
  ["lora_r", "int", "default 16", "1 – 256"],
  ["lora_alpha", "int", "default 32", "1 – 1024"],
  ["lora_dropout", "float", "default 0.05", "0 – <1"],
  ["weight_decay", "float", "default 0.0 (AdamW)", "0 – 1"],
  ["warmup_ratio", "float", "default 0.1 of the steps, linear", "0 – <1"],
  ["lr_scheduler", ["linear", "cosine", "constant"], "default linear decay after warm-up", ""],
  ["gradient_accumulation_steps", "int", "default 1 (same result, less memory)", "1 – 64"],
  ["max_seq_len", "int", "default 1024 tokens; longer examples keep their first tokens", "32 – 32768"],
  ["eval_interval", "int", "default: validation at each epoch end only", "steps ≥ 1"],
  ["early_stopping_patience", "int", "default off; needs a validation file", "1 – 100"],
  ["prompt_loss_weight", "float", "default 0.0 (loss only on the answer tokens)", "0 – 1"],
  ["train_top_k_layers", "int", "default: all layers get adapters", "1 – 1000"],
  ["freeze_first_n_layers", "int", "default: none frozen; not with train_top_k_layers", "1 – 1000, below the layer count"],
  ["gradient_checkpointing", "bool", "default off; on: less memory, one more forward pass per step, same losses", ""],
];

function field([name, kind, hint, range]) {
  const input = kind === "bool"
    ? h(`select#hp-${name}`, { name, dataset: { kind } }, ...[["", "auto"], ["true", "on"], ["false", "off"]]
      .map(([value, label]) => h("option", { value }, label)))
    : Array.isArray(kind)
    ? h(`select#hp-${name}`, { name }, h("option", { value: "" }, "auto"), ...kind.map((v) => h("option", { value: v }, v)))
    : h(`input#hp-${name}`, { name, type: "number", step: kind === "int" ? "1" : "any", placeholder: "auto", dataset: { kind } });
  return h("div", {}, h("label", { htmlFor: `hp-${name}` }, name), input,
    h("div.hint", {}, hint, range ? ` · allowed ${range}` : ""));
}

export function render(root, params) {
  const model = h("select#model", { name: "model", required: true });
  const training = h("select#training-file", { name: "training_file", required: true });
  const validation = h("select#validation-file", { name: "validation_file" });
  const method = h("select#method", { name: "method" },
    ...Object.entries(METHODS).map(([value, m]) => h("option", { value }, m.label)));
  const methodHint = h("div.hint");
  const showHint = () => { methodHint.textContent = METHODS[method.value].hint; };
  method.addEventListener("change", showHint);
  showHint();
  const suffix = h("input#suffix", { name: "suffix", placeholder: "optional, e.g. pirate", maxLength: 64 });
  const seed = h("input#seed", { name: "seed", type: "number", placeholder: "random" });
  const problem = h("div#job-error");
  const submit = h("button.primary#create-job", { type: "submit" }, "Start fine-tuning");

  const form = h("form#new-job", { onsubmit: async (e) => {
    e.preventDefault();
    problem.replaceChildren();
    for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
    const hyperparameters = { ...METHODS[method.value].extra };
    for (const input of form.querySelectorAll("[id^=hp-]")) {
      if (input.value === "") continue;
      hyperparameters[input.name] = input.dataset.kind === "int" ? Number.parseInt(input.value, 10)
        : input.dataset.kind === "float" ? Number(input.value)
        : input.dataset.kind === "bool" ? input.value === "true" : input.value;
    }
    const body = { model: model.value, training_file: training.value,
      method: { type: "supervised", supervised: { hyperparameters } } };
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value) body.suffix = suffix.value;
    if (seed.value !== "") body.seed = Number.parseInt(seed.value, 10);
    submit.disabled = true;
    try {
      const job = await api("/fine_tuning/jobs", { method: "POST", body });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      problem.replaceChildren(errorBox(error));
      const name = (error.param || "").split(".").pop();
      const culprit = name && (form.querySelector(`#hp-${name}`) || form.querySelector(`[name=${name}]`));
      if (culprit) { culprit.classList.add("invalid"); culprit.focus(); }
    } finally {
      submit.disabled = false;
    }
  } },
  h("div.card", {}, h("div.grid", {},
    h("div", {}, h("label", { htmlFor: "model" }, "Base model"), model, h("div.hint", {}, "From GET /v1/models (owned by whetstone).")),
    h("div", {}, h("label", { htmlFor: "method" }, "Method"), method, methodHint),
    h("div", {}, h("label", { htmlFor: "training-file" }, "Training file"), training, h("div.hint", {}, "At least 10 examples.")),
    h("div", {}, h("label", { htmlFor: "validation-file" }, "Validation file"), validation,
      h("div.hint", {}, "Optional: validation loss at each epoch end, and the best checkpoint.")),
    h("div", {}, h("label", { htmlFor: "suffix" }, "Suffix"), suffix, h("div.hint", {}, "Part of the model id: ft:base:project:suffix:…")),
    h("div", {}, h("label", { htmlFor: "seed" }, "Seed"), seed, h("div.hint", {}, "Fixes initialisation, dropout and data order.")))),
  h("div.card", {}, h("h2", {}, "Hyper-parameters ", h("span.hint", {}, "leave empty for \"auto\" / the default")),
    h("div.grid", {}, ...BASIC.map(field)),
    h("details", {}, h("summary", {}, "More (Whetstone's knobs beyond OpenAI's three)"), h("p"),
      h("div.grid", {}, ...ADVANCED.map(field)))),
  problem, submit);

  root.append(h("h1", {}, "New fine-tuning job"), form);

  (async () => {
    try {
      const [models, files] = await Promise.all([api("/models"), api("/files?purpose=fine-tune&limit=200")]);
      const bases = models.data.filter((m) => m.owned_by === "whetstone");
      model.replaceChildren(...bases.map((m) => h("option", { value: m.id, selected: m.id === params.model }, m.id)));
      const options = files.data.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`));
      training.replaceChildren(...options);
      if (params.file) training.value = params.file;
      validation.replaceChildren(h("option", { value: "" }, "none"), ...options.map((o) => o.cloneNode(true)));
      if (!files.data.length) problem.replaceChildren(h("div.error", {}, "Upload a training file first (Files)."));
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
  })();
}
