// The mmdiag case page: built at run time from the model card (GET /v1/model); predictions from POST /v1/predict.
// Text from the server is only ever set through textContent / attributes, never parsed as HTML.
"use strict";

const TOKEN_KEY = "mmdiag.token";
const PREVIEWABLE = ["image/png", "image/jpeg"];
const METRIC_NAMES = {acc: "Accuracy", balanced_acc: "Balanced accuracy", auc: "AUC", f1: "F1", map: "mAP"};
const METHOD_NAMES = {gradcam: "Grad-CAM", integrated_gradients: "Integrated Gradients"};

const state = {card: null, files: {}, previews: {}, busy: false};

// ------------------------------------------------------------------ helpers
function $(id) { return document.getElementById(id); }

/** An element with attributes (null/false skipped) and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "className") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) { node.replaceChildren(); return node; }
function pct(p) { return (100 * p).toFixed(1) + " %"; }
function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "—";
  const n = typeof x === "number" ? x : Number(x);
  return Number.isFinite(n) && String(x).trim() !== "" ? (Number.isInteger(n) ? String(n) : n.toFixed(digits)) : String(x);
}
function num3(x) { return typeof x === "number" && Number.isFinite(x) ? x.toFixed(3) : "—"; }
function bytes(n) { return n >= 2 ** 20 ? (n / 2 ** 20).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B"; }
function safeDataUrl(s) { return typeof s === "string" && s.startsWith("data:image/png;base64,") ? s : ""; }
function inputId(key) { return "in-" + key; }
function fileId(name) { return "file-" + name; }

function token() { return sessionStorage.getItem(TOKEN_KEY); }
function headers() { const t = token(); return t ? {Authorization: "Bearer " + t} : {}; }

/** fetch returning {status, body}; body is the parsed JSON or an {error} built from the text. */
async function request(url, options) {
  let response;
  try {
    response = await fetch(url, {...options, headers: {...headers(), ...(options && options.headers)}});
  } catch (e) {
    return {status: 0, body: {error: {status: 0, field: null, message: "the service cannot be reached (" + e.message + ")"}}};
  }
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch (e) { body = null; }
  if (!response.ok && !(body && body.error)) {
    body = {error: {status: response.status, field: null, message: text.slice(0, 300) || response.statusText}};
  }
  return {status: response.status, body};
}

// ------------------------------------------------------------------ errors
function clearErrors() {
  clear($("alert"));
  for (const node of document.querySelectorAll("[aria-invalid]")) {
    node.removeAttribute("aria-invalid");
    node.removeAttribute("aria-errormessage");
  }
  for (const zone of document.querySelectorAll(".upload.invalid, .field.invalid")) zone.classList.remove("invalid");
}

/** Show an API error in the alert region and mark the input it names. */
function showError(error, where) {
  const region = where || $("alert");
  clear(region);
  const field = error.field || null;
  const title = error.status ? "Error " + error.status : "Error";
  region.append(el("p", {className: "alert-title"}, title + (field ? " in field " : ""),
                   field ? el("code", {"data-field": field, text: field}) : ""),
                el("p", {className: "alert-message", text: error.message}));
  if (!field) return;
  const target = $(fileId(field)) || $(inputId(field));
  const targets = target ? [target]
    : [...document.querySelectorAll("[data-modality-input='" + CSS.escape(field) + "']")];
  for (const t of targets) {
    t.setAttribute("aria-invalid", "true");
    t.setAttribute("aria-errormessage", region.id);
    const box = t.closest(".upload, .field");
    if (box) box.classList.add("invalid");
  }
}

// ------------------------------------------------------------------ start: model card and token
async function start() {
  const {status, body} = await request("/v1/model");
  if (status === 401) {
    const had = token();
    sessionStorage.removeItem(TOKEN_KEY);
    askToken(had ? "The token was refused; enter it again." : "");
    return;
  }
  if (status !== 200) {
    $("model-line").textContent = "The model card could not be loaded.";
    showError(body.error, $("load-alert"));
    return;
  }
  $("auth").hidden = true;
  clear($("load-alert"));
  if (state.card) {  // the token was asked again mid-session: keep the inputs
    $("app").hidden = false;
    $("model-line").textContent = state.card.model.name + " · run " + state.card.run + " · dataset " + state.card.dataset;
    return;
  }
  state.card = body;
  build(body);
}

function askToken(message) {
  $("model-line").textContent = "A token is required.";
  $("auth").hidden = false;
  $("app").hidden = true;
  const alert = $("load-alert");
  clear(alert);
  if (message) {
    alert.append(el("p", {text: message}));
    $("token").setAttribute("aria-invalid", "true");
  }
  $("token").focus();
}

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) { askToken("Enter the token."); return; }
  sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  $("token").removeAttribute("aria-invalid");
  start();
});

// ------------------------------------------------------------------ the page from the card
function imageModalities(card) { return card.modalities.filter((m) => m.kind !== "tabular"); }
function tabularModalities(card) { return card.modalities.filter((m) => m.kind === "tabular"); }

function build(card) {
  $("model-line").textContent = card.model.name + " · run " + card.run + " · dataset " + card.dataset;
  document.title = "mmdiag: " + card.model.name + " (" + card.run + ")";
  const uploads = clear($("uploads"));
  for (const m of imageModalities(card)) uploads.append(uploadZone(m));
  const record = clear($("record"));
  for (const m of tabularModalities(card)) record.append(recordFieldset(m));
  buildCard(card);
  updatePlan();
  $("app").hidden = false;
}

function uploadZone(m) {
  const id = fileId(m.name);
  const formats = m.formats.map((f) => f.toUpperCase()).join(", ");
  const accept = m.formats.flatMap((f) => ({png: [".png"], jpeg: [".jpg", ".jpeg"], dicom: [".dcm", ".dicom"],
                                          nifti: [".nii", ".nii.gz", ".gz"], npy: [".npy"]}[f] || [])).join(",");
  const input = el("input", {type: "file", id, name: m.name, accept, "aria-describedby": id + "-hint " + id + "-state",
                             "data-modality-input": m.name});
  const preview = el("div", {className: "preview", id: id + "-preview"});
  const stateLine = el("p", {className: "file-state", id: id + "-state", text: "Not provided"});
  const clearButton = el("button", {type: "button", className: "clear", id: id + "-clear", disabled: true,
                                    "aria-label": "Clear " + m.name}, "Clear");
  const zone = el("div", {className: "upload", "data-modality": m.name, "data-state": "empty"},
    el("div", {className: "upload-head"},
       el("h3", {}, m.name),
       el("span", {className: "tag", text: m.kind + " · " + m.channels + " ch · " + m.size.join("×")})),
    el("div", {className: "drop"},
       preview,
       el("div", {className: "drop-text"},
          el("label", {for: id}, "Choose a " + m.name + " file"),
          input,
          el("p", {className: "hint", id: id + "-hint"}, "or drag and drop it here. Accepted: " + formats + "."),
          stateLine,
          clearButton)));
  input.addEventListener("change", () => setFile(m.name, input.files[0] || null));
  clearButton.addEventListener("click", () => { setFile(m.name, null); input.focus(); });
  const drop = zone.querySelector(".drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (!file) return;
    try { input.files = e.dataTransfer.files; } catch (err) { /* older browsers: the state below still holds it */ }
    setFile(m.name, file);
  });
  return zone;
}

function setFile(name, file) {
  const id = fileId(name);
  const zone = document.querySelector(".upload[data-modality='" + CSS.escape(name) + "']");
  const input = $(id);
  if (state.previews[name]) { URL.revokeObjectURL(state.previews[name]); delete state.previews[name]; }
  const preview = clear($(id + "-preview"));
  input.removeAttribute("aria-invalid");
  zone.classList.remove("invalid");
  if (file) {
    state.files[name] = file;
    zone.dataset.state = "provided";
    $(id + "-state").textContent = "Provided: " + file.name + " (" + bytes(file.size) + ")";
    $(id + "-clear").disabled = false;
    const lower = file.name.toLowerCase();
    if (PREVIEWABLE.includes(file.type) || /\.(png|jpe?g)$/.test(lower)) {
      state.previews[name] = URL.createObjectURL(file);
      preview.append(el("img", {src: state.previews[name], alt: "Preview of the " + name + " upload"}));
    } else {
      preview.append(el("p", {className: "no-preview"}, "No preview (DICOM/NIfTI/NPY); shown after prediction"));
    }
  } else {
    delete state.files[name];
    input.value = "";
    zone.dataset.state = "empty";
    $(id + "-state").textContent = "Not provided";
    $(id + "-clear").disabled = true;
  }
  updatePlan();
}

function recordFieldset(m) {
  const box = el("fieldset", {className: "record", "data-modality": m.name},
                 el("legend", {}, m.name),
                 el("p", {className: "hint"}, "Leave a field empty when it is not known."));
  const grid = el("div", {className: "fields"});
  for (const f of m.fields) {
    const id = inputId(f.key);
    let control, hint = "";
    if (f.type === "categorical") {
      control = el("select", {id, name: f.key, "data-modality-input": m.name},
                   el("option", {value: ""}, "not provided"),
                   f.values.map((v) => el("option", {value: v}, v)));
    } else {
      control = el("input", {id, name: f.key, type: "number", step: "any", inputmode: "decimal",
                             min: f.min, max: f.max, placeholder: "not provided", "data-modality-input": m.name});
      const range = f.min !== null && f.max !== null ? fmt(f.min) + "–" + fmt(f.max)
        : f.min !== null ? "≥ " + fmt(f.min) : f.max !== null ? "≤ " + fmt(f.max) : "";
      hint = [range, f.unit].filter(Boolean).join(" ");
      if (hint) control.setAttribute("aria-describedby", id + "-hint");
    }
    control.addEventListener("input", () => {
      control.removeAttribute("aria-invalid");
      control.closest(".field").classList.remove("invalid");
      updatePlan();
    });
    grid.append(el("div", {className: "field"},
                   el("label", {for: id}, f.name, f.unit ? el("span", {className: "unit"}, " (" + f.unit + ")") : ""),
                   control,
                   hint ? el("span", {className: "hint", id: id + "-hint"}, hint) : ""));
  }
  box.append(grid);
  return box;
}

// ------------------------------------------------------------------ inputs → requests
/** The record values entered, or throws an {error} naming a number field the browser could not parse. */
function recordValues() {
  const values = {};
  for (const m of tabularModalities(state.card)) {
    for (const f of m.fields) {
      const control = $(inputId(f.key));
      if (control.validity && control.validity.badInput) {
        throw {status: 422, field: f.key, message: f.key + ": not a number"};
      }
      const v = control.value.trim();
      if (v !== "") values[f.key] = v;
    }
  }
  return values;
}

/** Modalities the user provided (an image with a file, a record with at least one value). */
function providedModalities(values) {
  const given = new Set(Object.keys(state.files));
  for (const key of Object.keys(values)) given.add(key.split(".")[0]);
  return state.card.modalities.map((m) => m.name).filter((n) => given.has(n));
}

function formData(modalities, values) {
  const data = new FormData();
  for (const name of modalities) {
    if (state.files[name]) data.append(name, state.files[name], state.files[name].name);
  }
  for (const [key, v] of Object.entries(values)) {
    if (modalities.includes(key.split(".")[0])) data.append(key, v);
  }
  return data;
}

async function predict(modalities, values, explain) {
  const url = "/v1/predict" + (explain ? "" : "?explain=false");
  const {status, body} = await request(url, {method: "POST", body: formData(modalities, values)});
  if (status === 401) { sessionStorage.removeItem(TOKEN_KEY); askToken("The token was refused; enter it again."); }
  if (status !== 200) throw body.error;
  return body;
}

function setBusy(busy, text) {
  state.busy = busy;
  for (const id of ["predict", "compare-run", "reset"]) $(id).disabled = busy;
  $("predict").setAttribute("aria-busy", busy ? "true" : "false");
  $("compare-run").setAttribute("aria-busy", busy ? "true" : "false");
  document.querySelector(".results").setAttribute("aria-busy", busy ? "true" : "false");
  $("progress").hidden = !busy;
  $("progress-text").textContent = busy ? text : "";
  if (busy) $("status").textContent = text;
}

$("case").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (state.busy) return;
  clearErrors();
  let values;
  try { values = recordValues(); } catch (e) { showError(e); return; }
  const modalities = providedModalities(values);
  setBusy(true, "Predicting…");
  const started = performance.now();
  try {
    const result = predict(modalities, values, true);
    renderResult(await result);
    $("status").textContent = "Prediction done in " + ((performance.now() - started) / 1000).toFixed(1) + " s.";
    selectTab("result");
  } catch (e) {
    showError(e || {status: 0, field: null, message: "unknown error"});
    $("status").textContent = "The prediction failed.";
  } finally {
    setBusy(false);
  }
});

$("reset").addEventListener("click", () => {
  for (const name of Object.keys(state.files)) setFile(name, null);
  for (const node of document.querySelectorAll("#record select, #record input")) node.value = "";
  clearErrors();
  updatePlan();
});

// ------------------------------------------------------------------ results
function renderResult(result) {
  $("result-empty").hidden = true;
  const root = clear($("result"));
  const used = el("p", {className: "used"}, el("strong", {}, "Inputs used: "), result.provided.join(", ") || "none");
  if (result.missing.length) {
    used.append(el("br"), el("strong", {}, "Not provided: "), result.missing.join(", "),
                " (treated as missing modalities)");
  }
  root.append(used);
  for (const task of state.card.tasks) {
    const r = result.tasks[task.name];
    if (r) root.append(taskBars(task, r));
  }
  const explanations = Object.entries(result.explanations || {});
  if (explanations.length) {
    root.append(el("h3", {}, "Explanations"));
    const grid = el("div", {className: "explanations"});
    for (const [name, e] of explanations) grid.append(explanationFigure(name, e));
    root.append(grid);
  }
  root.append(el("p", {className: "hint"}, "Computed in " + result.seconds + " s by the service."));
}

function isPredicted(r, cls) { return r.multilabel ? r.predicted.includes(cls) : r.predicted === cls; }

function taskBars(task, r) {
  const entries = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]);
  const predictedText = r.multilabel ? (r.predicted.join(", ") || "none ≥ 0.5") : r.predicted;
  const section = el("section", {className: "task", "data-task": task.name},
    el("h3", {}, task.name, el("span", {className: "task-type"}, " · " + task.type)),
    el("p", {className: "verdict"}, r.multilabel ? "Positive (probability ≥ 0.5): " : "Predicted class: ",
       el("strong", {"data-predicted-class": predictedText}, predictedText)));
  const list = el("ul", {className: "bars", "aria-label": "Probabilities for " + task.name});
  for (const [cls, p] of entries) {
    const chosen = isPredicted(r, cls);
    list.append(el("li", {className: "bar-row" + (chosen ? " predicted" : ""), "data-class": cls,
                          "data-probability": String(p), "data-predicted": chosen ? "true" : "false"},
      el("span", {className: "cls"}, cls,
         chosen ? el("span", {className: "badge"}, r.multilabel ? "✓ positive" : "✓ predicted") : ""),
      el("span", {className: "track", "aria-hidden": "true"},
         el("span", {className: "fill", style: "width:" + Math.max(0, Math.min(100, 100 * p)).toFixed(2) + "%"})),
      el("span", {className: "pct"}, pct(p)),
      el("span", {className: "exact"}, "p = " + p.toFixed(6))));
  }
  section.append(list);
  return section;
}

function explanationFigure(name, e) {
  const id = "opacity-" + name;
  const method = METHOD_NAMES[e.method] || e.method;
  const map = el("img", {className: "map", src: safeDataUrl(e.map_png), alt: method + " map for " + name});
  const out = el("output", {for: id, id: id + "-value"}, "50 %");
  const slider = el("input", {type: "range", id, min: 0, max: 100, step: 5, value: 50,
                              "aria-valuetext": "50 percent"});
  map.style.opacity = "0.5";
  slider.addEventListener("input", () => {
    map.style.opacity = String(slider.value / 100);
    out.textContent = slider.value + " %";
    slider.setAttribute("aria-valuetext", slider.value + " percent");
  });
  const details = [method];
  if (e.layer) details.push("layer " + e.layer);
  if (e.baseline) details.push(e.baseline + " baseline, " + e.steps + " steps");
  details.push("for class " + e.class + " (task " + e.task + ")");
  if (e.slices) details.push("slice " + (e.slice + 1) + " of " + e.slices + " (where the map is strongest)");
  return el("figure", {className: "explanation", "data-modality": name, "data-method": e.method},
    el("div", {className: "overlay"},
       el("img", {className: "base", src: safeDataUrl(e.image_png), alt: name + " input as the model sees it"}),
       map),
    el("div", {className: "legend", "aria-hidden": "true"}, el("span", {}, "low"), el("span", {className: "jet"}),
       el("span", {}, "high")),
    el("div", {className: "slider"}, el("label", {for: id}, "Map opacity"), slider, out),
    el("figcaption", {}, el("strong", {}, name + ": "), details.join("; ") + "."));
}

// ------------------------------------------------------------------ compare by modality
/** Reader-study order: the first image modality, then the records, then the other images. */
function readerOrder(card) {
  const images = imageModalities(card).map((m) => m.name);
  const records = tabularModalities(card).map((m) => m.name);
  return [...images.slice(0, 1), ...records, ...images.slice(1)];
}

function compareSteps(values) {
  const given = new Set(providedModalities(values));
  const order = readerOrder(state.card).filter((n) => given.has(n));
  const names = state.card.modalities.map((m) => m.name);
  return order.map((_, i) => {
    const set = order.slice(0, i + 1);
    return {modalities: set, label: names.filter((n) => set.includes(n)).join(" + "), added: order[i]};
  });
}

function updatePlan() {
  if (!state.card) return;
  const plan = clear($("compare-plan"));
  let values = {};
  try { values = recordValues(); } catch (e) { /* shown when run */ }
  const steps = compareSteps(values);
  const given = new Set(providedModalities(values));
  for (const s of steps) plan.append(el("li", {}, s.label));
  const skipped = readerOrder(state.card).filter((n) => !given.has(n));
  if (!steps.length) plan.append(el("li", {className: "hint"}, "Provide at least one input first."));
  if (skipped.length && steps.length) {
    plan.append(el("li", {className: "hint skipped"}, "left out (not provided): " + skipped.join(", ")));
  }
}

$("compare-run").addEventListener("click", async () => {
  if (state.busy) return;
  clearErrors();
  let values;
  try { values = recordValues(); } catch (e) { showError(e); return; }
  const steps = compareSteps(values);
  if (!steps.length) {
    showError({status: 0, field: null, message: "provide at least one input to compare"});
    return;
  }
  const results = [];
  try {
    for (const [i, s] of steps.entries()) {
      setBusy(true, "Step " + (i + 1) + " of " + steps.length + ": " + s.label + "…");
      results.push(await predict(s.modalities, values, false));
    }
    renderCompare(steps, results);
    $("status").textContent = "Comparison done: " + steps.length + " steps.";
  } catch (e) {
    showError(e || {status: 0, field: null, message: "unknown error"});
    $("status").textContent = "The comparison failed.";
  } finally {
    setBusy(false);
  }
});

function renderCompare(steps, results) {
  const root = clear($("compare"));
  for (const task of state.card.tasks) {
    const table = el("table", {className: "compare", "data-task": task.name});
    table.append(el("caption", {}, task.name + ": probability per class as modalities are added"));
    const head = el("tr", {}, el("th", {scope: "col"}, "Step: inputs → " + (task.type === "multilabel" ? "positive" : "predicted")));
    for (const cls of task.classes) head.append(el("th", {scope: "col"}, cls));
    table.append(el("thead", {}, head));
    const body = el("tbody");
    results.forEach((res, i) => {
      const r = res.tasks[task.name];
      const prev = i > 0 ? results[i - 1].tasks[task.name] : null;
      const predicted = r.multilabel ? (r.predicted.join(", ") || "none") : r.predicted;
      const row = el("tr", {"data-step": i + 1, "data-modalities": steps[i].modalities.join(",")},
                     el("th", {scope: "row", className: "inputs"}, (i + 1) + ". " + steps[i].label,
                        i > 0 ? el("span", {className: "added"}, " (+ " + steps[i].added + ")") : "",
                        el("span", {className: "verdict", "data-predicted-class": predicted}, "→ " + predicted)));
      for (const cls of task.classes) {
        const p = r.probabilities[cls];
        const chosen = isPredicted(r, cls);
        const cell = el("td", {className: "prob" + (chosen ? " predicted" : ""), "data-class": cls,
                               "data-probability": String(p), "data-predicted": chosen ? "true" : "false"},
          el("span", {className: "mini", "aria-hidden": "true"},
             el("span", {className: "fill", style: "width:" + (100 * p).toFixed(2) + "%"})),
          el("span", {className: "pct"}, pct(p), chosen ? el("span", {className: "mark", "aria-hidden": "true"}, " ✓") : "",
             chosen ? el("span", {className: "visually-hidden"}, " (predicted)") : ""),
          el("span", {className: "exact"}, p.toFixed(6)));
        if (prev) {
          const d = 100 * (p - prev.probabilities[cls]);
          cell.append(el("span", {className: "delta"}, (d >= 0 ? "+" : "−") + Math.abs(d).toFixed(1) + " pp"));
        }
        row.append(cell);
      }
      body.append(row);
    });
    table.append(body);
    root.append(el("div", {className: "table-scroll"}, table));
  }
  root.append(el("p", {className: "hint"}, "✓ marks the predicted class; pp = change in percentage points from the previous step."));
}

// ------------------------------------------------------------------ tabs
function selectTab(which) {
  for (const name of ["result", "compare"]) {
    const on = name === which;
    const tab = $("tab-" + name);
    tab.setAttribute("aria-selected", on ? "true" : "false");
    tab.tabIndex = on ? 0 : -1;
    $("view-" + name).hidden = !on;
  }
}

for (const name of ["result", "compare"]) {
  $("tab-" + name).addEventListener("click", () => selectTab(name));
  $("tab-" + name).addEventListener("keydown", (e) => {
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    const other = name === "result" ? "compare" : "result";
    selectTab(other);
    $("tab-" + other).focus();
  });
}

// ------------------------------------------------------------------ model card
function buildCard(card) {
  const root = clear($("card-body"));
  const params = card.model.parameters.toLocaleString("en-US");
  const cases = Object.entries(card.training.cases).map(([k, v]) => k + " " + v).join(", ");
  const facts = [
    ["Model", card.model.name + (card.model.description ? ": " + card.model.description : "")],
    ["Parameters", params],
    ["Run", card.run],
    ["Dataset", card.dataset],
    ["Training cases", cases + " (" + card.training.epochs + (card.training.epochs === 1 ? " epoch)" : " epochs)")],
    ["Score", card.score],
    ["Inputs", card.modalities.map((m) => m.name + " (" + (m.kind === "tabular" ? "record, " + m.fields.length + " fields"
      : m.kind + ", " + m.formats.map((f) => f.toUpperCase()).join("/")
        + (m.explanation ? ", " + (METHOD_NAMES[m.explanation] || m.explanation) : "")) + ")").join("; ")],
    ["Upload limits", bytes(card.upload_limits.max_file_bytes) + " per file, " + bytes(card.upload_limits.max_request_bytes)
      + " per request"],
  ];
  const dl = el("dl", {className: "facts"});
  for (const [k, v] of facts) dl.append(el("dt", {}, k), el("dd", {}, v));
  root.append(dl);

  root.append(el("h3", {}, "Test metrics"));
  if (card.metrics) {
    const table = el("table", {className: "metrics"},
      el("caption", {}, "On the run's " + card.metrics.split + " split, with 95 % confidence intervals where available"),
      el("thead", {}, el("tr", {}, ["Task", "Metric", "Value", "95 % CI", "n"].map((h) => el("th", {scope: "col"}, h)))));
    const body = el("tbody");
    for (const [task, m] of Object.entries(card.metrics.tasks)) {
      for (const [key, v] of Object.entries(m)) {
        if (key === "n" || !v) continue;
        body.append(el("tr", {"data-task": task, "data-metric": key},
          el("td", {}, task), el("th", {scope: "row"}, METRIC_NAMES[key] || key), el("td", {}, num3(v.value)),
          el("td", {}, v.ci95 ? num3(v.ci95[0]) + " – " + num3(v.ci95[1]) : "—"), el("td", {}, m.n ?? "—")));
      }
    }
    table.append(body);
    root.append(el("div", {className: "table-scroll"}, table));
  } else {
    root.append(el("p", {}, "This run has no test metrics (it was not evaluated)."));
  }

  if (card.missing_modalities && card.missing_modalities.length) {
    root.append(el("h3", {}, "When a modality is missing"));
    const cols = Object.keys(card.missing_modalities[0]);
    const table = el("table", {className: "metrics", id: "missing-modalities"},
      el("caption", {}, "Test metrics with each modality removed from every case (the model is not retrained)"),
      el("thead", {}, el("tr", {}, cols.map((c) => el("th", {scope: "col"}, c)))));
    const body = el("tbody");
    for (const row of card.missing_modalities) {
      body.append(el("tr", {}, cols.map((c, i) => i === 0 ? el("th", {scope: "row"}, row[c]) : el("td", {}, fmt(row[c])))));
    }
    table.append(body);
    root.append(el("div", {className: "table-scroll"}, table));
  }

  root.append(el("h3", {}, "Intended use"), el("p", {}, card.intended_use));
  root.append(el("h3", {}, "Limits"), el("ul", {}, card.limits.map((l) => el("li", {}, l))));
}

start();
