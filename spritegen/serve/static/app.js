// spritegen's web page: plain JS against /api/v1 (spritegen/serve/app.py), no build step, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const API = "/api/v1";

const state = {
  health: null,       // GET /health: families, limits, defaults, api_key_required
  experiments: null,  // GET /experiments: runs, rows, params, notes
  key: sessionStorage.getItem("spritegen-api-key") || "",
  generation: null,   // AbortController of the generation in flight
  live: null,         // AbortController of the live comparison in flight
};

// ---- talking to the API --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, field = null, status = null) {
    super(message);
    this.field = field;
    this.status = status;
  }
}

function withKey(headers = {}) {
  // the key goes in a header only (the API reads no key from the query), so every request is a fetch
  return state.key ? { ...headers, "X-API-Key": state.key } : headers;
}

async function failure(res) {
  // every API error is JSON {error, field, status}; anything else (a proxy's page) is named by its status
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  let message = body && typeof body.error === "string" ? body.error : `the server answered ${res.status} ${res.statusText}`;
  const retry = res.headers.get("Retry-After");
  if (retry && (res.status === 429 || res.status === 503)) message += ` (try again in ${retry} s)`;
  return new ApiError(message, body ? body.field : null, res.status);
}

async function api(path, options = {}) {
  let res;
  try {
    res = await fetch(API + path, { ...options, headers: withKey(options.headers) });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError("could not reach the server: is `spritegen serve` still running?");
  }
  if (!res.ok) throw await failure(res);
  return res;
}

const getJSON = async (path) => (await api(path)).json();

// Server-Sent Events read from a fetch body: unlike EventSource, fetch sees a 422/429/503's JSON body
// (shown to the person) and can send the X-API-Key header.
async function* sseEvents(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

// ---- small helpers -------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k in node) node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function showError(e) {
  const box = $("#error");
  box.textContent = e instanceof ApiError || !(e instanceof Error) ? String(e.message || e)
    : `something went wrong in the page: ${e.message}`;
  box.hidden = false;
  document.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
  // point at the field the API named, when it is one of the form's
  const input = e && e.field ? document.getElementById(e.field) : null;
  if (input && input.closest("#generate-form")) input.setAttribute("aria-invalid", "true");
  if (e && e.status === 401) $("#api-key").focus();
}

function clearError() {
  $("#error").hidden = true;
  $("#error").textContent = "";
  document.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
}

const pngSrc = (b64) => `data:image/png;base64,${b64}`;

function spriteImg(src, resolution, alt) {
  // a whole-number scale keeps every pixel square; `image-rendering: pixelated` (style.css) keeps it sharp
  const px = resolution * Math.max(1, Math.floor(128 / resolution));
  return el("img", { src, alt, width: px, height: px, class: "pixel" });
}

async function imageSrc(url) {
  // with an API key an <img src> cannot send the header: fetch the PNG and show it as an object URL
  if (!state.key) return url;
  return URL.createObjectURL(await (await api(url.slice(API.length))).blob());
}

// ---- views ---------------------------------------------------------------------------------------

function showView(name) {
  for (const view of ["generate", "gallery"]) {
    $(`#view-${view}`).hidden = view !== name;
    $(`#tab-${view}`).setAttribute("aria-selected", String(view === name));
  }
  if (name === "gallery" && !state.galleryShown) {
    state.galleryShown = true;
    loadGallery();
  }
}

// ---- health: families, limits, defaults ----------------------------------------------------------

async function loadHealth() {
  const h = state.health = await getJSON("/health");
  $("#server").textContent = `${h.device} · up ${Math.round(h.uptime_s)} s · version ${h.version}`;
  $("#key-box").hidden = !h.api_key_required;

  const family = $("#family");
  family.replaceChildren();
  for (const [name, f] of Object.entries(h.families)) {
    const text = f.trained ? `${name} (checkpoint ${f.checkpoint})` : `${name} — not trained: ${f.train_command}`;
    family.append(el("option", { value: name, disabled: !f.trained }, text));
  }
  const trained = Object.keys(h.families).filter((n) => h.families[n].trained);
  if (trained.length) family.value = trained[0];
  else {
    $("#submit").disabled = true;
    $("#status").textContent = "No family is trained yet: run one of the commands listed under Family.";
  }

  const { limits, defaults } = h;
  $("#sampler").replaceChildren(...limits.samplers.map((s) => el("option", { value: s }, s)));
  $("#sampler").value = defaults.sampler;
  $("#steps").value = defaults.steps;
  $("#guidance").value = defaults.guidance;
  $("#temperature").value = defaults.temperature;
  // hints for the spinners; the form is novalidate, the server checks every limit and says which
  $("#num_samples").max = limits.max_samples;
  $("#steps").max = limits.max_steps;
  $("#guidance").max = limits.max_guidance;
  $("#seed").max = limits.max_seed;
  $("#live-seed").max = limits.max_seed;
  onFamily();
  countPrompt();
}

function onFamily() {
  // ldm takes steps/guidance/sampler, cvae and gan a temperature: the API refuses the other family's fields
  const ldm = $("#family").value === "ldm";
  for (const [id, on] of [["#ldm-fields", ldm], ["#latent-fields", !ldm]]) {
    $(id).hidden = !on;
    $(id).disabled = !on;
  }
}

function countPrompt() {
  const max = state.health ? state.health.limits.max_prompt_chars : null;
  const n = $("#prompt").value.length;
  $("#prompt-count").textContent = max ? `${n} / ${max} characters` : "";
  $("#prompt-count").classList.toggle("over", max !== null && n > max);
}

// ---- experiments: the selects, the metrics table, the grids --------------------------------------

async function loadExperiments() {
  const x = state.experiments = await getJSON("/experiments");
  const runs = x.runs.filter((r) => r.kind !== "workspace");
  const select = $("#experiment");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "workspace" }, "workspace"),
    ...runs.map((r) => el("option", { value: r.name }, r.label.includes(r.name) ? r.label : `${r.name} (${r.label})`)));
  select.value = runs.some((r) => r.name === chosen) ? chosen : "workspace";

  const boxes = $("#live-experiments");
  const checked = new Set([...boxes.querySelectorAll("input:checked")].map((i) => i.value));
  if (!checked.size) checked.add("workspace");
  boxes.replaceChildren(el("legend", {}, "experiments"),
    ...["workspace", ...runs.map((r) => r.name)].map((name) =>
      el("label", { class: "check" }, el("input", { type: "checkbox", value: name, checked: checked.has(name) }), ` ${name}`)));
  return x;
}

function cellText(cell) {
  if (!cell) return "—";
  const fmt = (v) => Number(v.toPrecision(4)).toString();
  const half = cell.ci95 ? ` ±${fmt((cell.ci95[1] - cell.ci95[0]) / 2)}` : "";
  return fmt(cell.value) + half + ({ better: " ▲", worse: " ▼" }[cell.mark] || "");
}

function renderMetrics(x) {
  const table = $("#metrics");
  table.replaceChildren();
  table.hidden = $("#legend").hidden = !x.rows.length;
  if (x.rows.length) {
    const heads = x.runs.map((r) => el("th", { scope: "col" }, r.label + (r.label === x.reference ? " (ref)" : "")));
    table.append(el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "family"), el("th", { scope: "col" }, "metric"), ...heads)));
    const arrow = { lower: " ↓", higher: " ↑" };
    // rows come grouped by family: its name spans its group, so the metrics read as one block each
    const span = {};
    for (const row of x.rows) span[row.family] = (span[row.family] || 0) + 1;
    table.append(el("tbody", {}, ...x.rows.map((row, i) => el("tr", { class: i && x.rows[i - 1].family !== row.family ? "group" : "" },
      i && x.rows[i - 1].family === row.family ? null : el("th", { scope: "rowgroup", rowSpan: span[row.family] }, row.family),
      el("td", {}, row.metric + (arrow[row.direction] || "")),
      ...row.cells.map((c) => el("td", { class: `num ${c && c.mark ? c.mark : ""}` }, cellText(c)))))));
  }
  const params = $("#params");
  params.replaceChildren();
  params.hidden = !x.params.length;
  if (x.params.length) {
    params.append(el("caption", {}, "params that differ"),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "param"), ...x.runs.map((r) => el("th", { scope: "col" }, r.label)))),
      el("tbody", {}, ...x.params.map((p) => el("tr", {}, el("td", {}, p.key), ...p.values.map((v) => el("td", { class: "num" }, v))))));
  }
  // notes say why a table is empty (not a DVC project, no metrics yet): shown, never an error
  $("#notes").replaceChildren(...x.notes.map((n) => el("li", {}, n)));
}

function renderGrids(x) {
  const box = $("#grids");
  box.replaceChildren();
  for (const run of x.runs) {
    const figures = Object.entries(run.grids).map(([family, url]) => {
      const fig = el("figure", {}, el("figcaption", {}, family));
      imageSrc(url).then((src) => {
        const img = el("img", { src, alt: `${run.label}: ${family} sample grid`, class: "grid pixel", loading: "lazy" });
        const box = el("div", { class: "grid-box" }, img);
        // a committed run's grid may not be in the local DVC cache: say so in place of the image
        img.addEventListener("error", () => box.replaceWith(el("p", { class: "muted" }, "no grid here")));
        fig.append(box);
      }).catch((e) => fig.append(el("p", { class: "muted" }, e.message)));
      return fig;
    });
    box.append(el("div", { class: "run" }, el("h3", {}, run.label + (run.kind !== "workspace" && run.rev ? ` · ${run.rev.slice(0, 7)}` : "")), ...figures));
  }
}

async function loadGallery() {
  $("#gallery-status").textContent = "Reading the experiments (dvc exp show)…";
  try {
    const x = await loadExperiments();
    renderMetrics(x);
    renderGrids(x);
    $("#gallery-status").textContent = x.rows.length ? `${x.runs.length} runs` : "No metrics to compare yet.";
  } catch (e) {
    $("#gallery-status").textContent = "";
    showError(e);
  }
}

// ---- generate ------------------------------------------------------------------------------------

function formParams() {
  const family = $("#family").value;
  const p = { prompt: $("#prompt").value, family, num_samples: $("#num_samples").value, seed: $("#seed").value };
  if ($("#experiment").value !== "workspace") p.experiment = $("#experiment").value;
  if (family === "ldm") Object.assign(p, { steps: $("#steps").value, guidance: $("#guidance").value, sampler: $("#sampler").value });
  else p.temperature = $("#temperature").value;
  // an empty number box is left out, so the server uses its default
  for (const k of Object.keys(p)) if (p[k] === "") delete p[k];
  return p;
}

function checkParams(p) {
  // a convenience only: the server checks every field and its words are shown for anything else
  const limits = state.health.limits;
  if (!p.prompt || !p.prompt.trim()) return new ApiError("Describe the sprite first: the prompt is empty.", "prompt");
  if (p.prompt.length > limits.max_prompt_chars)
    return new ApiError(`The prompt has ${p.prompt.length} characters; the limit is ${limits.max_prompt_chars}.`, "prompt");
  const n = Number(p.num_samples);
  if (p.num_samples !== undefined && !(Number.isInteger(n) && n >= 1 && n <= limits.max_samples))
    return new ApiError(`Samples must be a whole number from 1 to ${limits.max_samples}.`, "num_samples");
  return null;
}

function downloadUrl(settings, seed) {
  // the download endpoint generates that one seed again with the same settings (the same pixels)
  const q = { prompt: settings.prompt, family: settings.family, seed };
  if (settings.experiment !== "workspace") q.experiment = settings.experiment;
  for (const k of ["steps", "guidance", "sampler", "temperature"]) if (k in settings) q[k] = settings[k];
  return `${API}/download?${new URLSearchParams(q)}`;
}

async function downloadWithKey(event) {
  // a plain link cannot send X-API-Key: fetch the PNG, then save it through an object URL
  event.preventDefault();
  const link = event.currentTarget;
  try {
    const res = await api(link.getAttribute("href").slice(API.length));
    const name = /filename="([^"]+)"/.exec(res.headers.get("Content-Disposition") || "");
    const url = URL.createObjectURL(await res.blob());
    const a = el("a", { href: url, download: name ? name[1] : "sprite.png" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    showError(e);
  }
}

function describe(data) {
  const s = data.settings;
  const sampling = s.family === "ldm" ? `${s.sampler}, ${s.steps} steps, guidance ${s.guidance}` : `temperature ${s.temperature}`;
  return `${data.family} · ${data.experiment} · model ${data.version} · ${Math.round(data.generation_ms)} ms on ${data.device} · ` +
    `${data.resolution}×${data.resolution} px · ${sampling} · seeds ${s.seeds[0]}–${s.seeds[s.seeds.length - 1]}`;
}

function showPreview(data, resolution) {
  const box = $("#preview");
  box.hidden = false;
  box.replaceChildren(...data.images.map((b64, k) => el("figure", {},
    spriteImg(pngSrc(b64), resolution, `preview ${k + 1}`),
    el("figcaption", { class: "muted" }, `step ${data.step} / ${data.steps}`))));
}

function showResult(data) {
  $("#preview").hidden = true;
  $("#result").hidden = false;
  $("#result-meta").textContent = describe(data);
  $("#sprites").replaceChildren(...data.images.map((b64, k) => {
    const seed = data.settings.seeds[k];
    const link = el("a", { href: downloadUrl(data.settings, seed), class: "download", download: "" }, "Download PNG");
    if (state.key) link.addEventListener("click", downloadWithKey);
    return el("figure", { class: "sprite" },
      spriteImg(pngSrc(b64), data.resolution, `${data.settings.prompt} (seed ${seed})`),
      el("figcaption", {}, `seed ${seed} `, link));
  }));
}

async function onGenerate(event) {
  event.preventDefault();
  clearError();
  const params = formParams();
  const problem = checkParams(params);
  if (problem) return showError(problem);

  if (state.generation) state.generation.abort();  // the server stops the old one at its next step
  const ctrl = state.generation = new AbortController();
  $("#submit").textContent = "Generating…";
  $("#status").textContent = "Waiting for a generation slot…";
  // previews arrive before the result says the resolution; the health's families do not either, so
  // the first preview is drawn at its own size and scaled like the sprites
  let resolution = null;
  try {
    const res = await api(`/generate/stream?${new URLSearchParams(params)}`, { signal: ctrl.signal });
    let done = false;
    for await (const { event: kind, data } of sseEvents(res)) {
      if (kind === "start") {
        $("#status").textContent = `Generating ${data.settings.num_samples} sprite(s)…`;
      } else if (kind === "preview") {
        resolution = resolution || (await pngSize(data.images[0]));
        $("#status").textContent = `Step ${data.step} of ${data.steps}…`;
        showPreview(data, resolution);
      } else if (kind === "result") {
        showResult(data);
        $("#status").textContent = `Done in ${Math.round(data.generation_ms)} ms.`;
        done = true;
      } else if (kind === "error") {
        throw new ApiError(data.error, data.field, data.status);
      }
    }
    if (!done) throw new ApiError("the server ended the stream before the sprites came: try again");
  } catch (e) {
    if (e.name === "AbortError") return;
    $("#status").textContent = "";
    $("#preview").hidden = true;
    showError(e);
  } finally {
    if (state.generation === ctrl) {
      state.generation = null;
      $("#submit").textContent = "Generate";
    }
  }
}

function pngSize(b64) {
  // a PNG's width is bytes 16..19 of its IHDR: no need to wait for the image to decode
  const bytes = atob(b64.slice(0, 32));
  return ((bytes.charCodeAt(16) << 24) | (bytes.charCodeAt(17) << 16) | (bytes.charCodeAt(18) << 8) | bytes.charCodeAt(19)) >>> 0;
}

// ---- live comparison: rows = prompts, columns = family × experiment -------------------------------

async function onLive(event) {
  event.preventDefault();
  clearError();
  if (!state.health) return;
  const prompts = $("#live-prompts").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const seed = Number($("#live-seed").value || 0);
  const experiments = [...$("#live-experiments").querySelectorAll("input:checked")].map((i) => i.value);
  const families = Object.keys(state.health.families).filter((f) => state.health.families[f].trained);
  const columns = experiments.flatMap((x) => families.map((f) => ({ family: f, experiment: x })));
  if (!prompts.length || !columns.length) {
    return showError(new ApiError("Give at least one prompt and tick at least one experiment (a trained family is needed too)."));
  }

  if (state.live) state.live.abort();
  const ctrl = state.live = new AbortController();
  const table = $("#live");
  const cells = prompts.map(() => columns.map(() => el("td", { class: "muted" }, "…")));
  table.replaceChildren(
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "prompt"),
      ...columns.map((c) => el("th", { scope: "col" }, c.experiment === "workspace" ? c.family : `${c.family} · ${c.experiment}`)))),
    el("tbody", {}, ...prompts.map((p, i) => el("tr", {}, el("th", { scope: "row" }, p), ...cells[i]))));
  table.hidden = false;

  // one request at a time: the server's slots are for everyone, and the cells fill in as they come
  let n = 0;
  for (const [i, prompt] of prompts.entries()) {
    for (const [j, col] of columns.entries()) {
      if (ctrl.signal.aborted) return;
      $("#live-status").textContent = `${++n} of ${prompts.length * columns.length}…`;
      const body = { prompt, family: col.family, seed, num_samples: 1 };
      if (col.experiment !== "workspace") body.experiment = col.experiment;
      try {
        const res = await api("/generate", {
          method: "POST", body: JSON.stringify(body), signal: ctrl.signal,
          headers: { "Content-Type": "application/json" },
        });
        const data = await res.json();
        cells[i][j].className = "";
        cells[i][j].replaceChildren(spriteImg(pngSrc(data.images[0]), data.resolution, `${col.family}: ${prompt}`));
        cells[i][j].title = describe(data);
      } catch (e) {
        if (e.name === "AbortError") return;
        cells[i][j].className = "cell-error";
        cells[i][j].textContent = e.message;
      }
    }
  }
  $("#live-status").textContent = `Done: seed ${seed} for every cell.`;
  if (state.live === ctrl) state.live = null;
}

// ---- start ---------------------------------------------------------------------------------------

async function start() {
  $("#tab-generate").addEventListener("click", () => { location.hash = "generate"; });
  $("#tab-gallery").addEventListener("click", () => { location.hash = "gallery"; });
  window.addEventListener("hashchange", () => showView(location.hash === "#gallery" ? "gallery" : "generate"));
  $("#family").addEventListener("change", onFamily);
  $("#prompt").addEventListener("input", countPrompt);
  $("#generate-form").addEventListener("submit", onGenerate);
  $("#live-form").addEventListener("submit", onLive);
  $("#gallery-refresh").addEventListener("click", loadGallery);
  $("#api-key").value = state.key;
  $("#api-key").addEventListener("change", () => {
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem("spritegen-api-key", state.key);
    clearError();
    loadExperiments().then((x) => state.galleryShown && (renderMetrics(x), renderGrids(x))).catch(showError);
  });

  try {
    await loadHealth();
  } catch (e) {
    $("#server").textContent = "not connected";
    showError(e);
    return;
  }
  showView(location.hash === "#gallery" ? "gallery" : "generate");
  // the experiments only fill the select here; the gallery renders them when it is shown
  if (!state.galleryShown) loadExperiments().catch((e) => { if (!state.health.api_key_required || state.key) showError(e); });
}

start();
