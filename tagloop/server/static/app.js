// tagloop's web page: an image -> tags (/tagloop/v1/tag) -> a prompt (/tagloop/v1/prompt) -> variants
// (/tagloop/v1/reproduce, polled at /tagloop/v1/jobs/{id}) -> their agreement scores.
// Plain JavaScript, no build step, nothing fetched from anywhere but this server. Every text from the
// server or the user goes into the page through textContent / value, never as markup.
"use strict";

(function () {
  const API = "/tagloop/v1";
  const POLL_MS = 500;
  const MAX_LIST = 12;

  const $ = (id) => document.getElementById(id);

  const state = {
    dataUrl: null, // the source image as a data: URL
    tagResult: null, // the last /tag answer
    tagSeq: 0, // only the newest request of each kind may change the page
    promptSeq: 0,
    jobSeq: 0,
    busy: false, // a reproduce job is being queued or polled
  };

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.name = "ApiError";
      this.status = status || 0;
    }
  }

  // -- small helpers ---------------------------------------------------------------------------

  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null) continue;
        if (key === "text") node.textContent = String(value);
        else if (key === "className") node.className = value;
        else if (key === "dataset") Object.assign(node.dataset, value);
        else node.setAttribute(key, String(value));
      }
    }
    for (const child of children || []) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(Number(value))) return "–";
    return Number(value).toFixed(digits === undefined ? 3 : digits);
  }

  function setText(id, text) {
    $(id).textContent = text || "";
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    const box = $("error");
    box.textContent = "";
    box.hidden = true;
  }

  function fail(err) {
    showError(err instanceof Error ? err.message : String(err));
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  /** One API call: the parsed JSON answer, or an ApiError carrying the server's `detail`. */
  async function api(method, path, body) {
    const init = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    let text;
    try {
      resp = await fetch(path, init);
      text = await resp.text();
    } catch (e) {
      throw new ApiError("the server cannot be reached (" + (e && e.message ? e.message : e) + ").", 0);
    }
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      let detail = data && data.detail !== undefined ? data.detail : data && data.error;
      if (detail && typeof detail !== "string") detail = JSON.stringify(detail);
      throw new ApiError(detail || `the server answered ${resp.status} ${resp.statusText}`.trim() + ".", resp.status);
    }
    if (data === null || typeof data !== "object") {
      throw new ApiError(`the server's answer to ${path} is not JSON.`, resp.status);
    }
    return data;
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result));
      reader.onerror = () => reject(new Error(`${file.name} cannot be read.`));
      reader.readAsDataURL(file);
    });
  }

  function jobFileUrl(jobId, file) {
    const parts = String(file).split("/").map(encodeURIComponent);
    return `${API}/jobs/${encodeURIComponent(jobId)}/${parts.join("/")}`;
  }

  function integerField(id, label) {
    const input = $(id);
    const value = Number(input.value);
    if (input.value.trim() === "" || !Number.isInteger(value)) {
      throw new Error(`${label} must be a whole number.`);
    }
    return value;
  }

  function updateButtons() {
    $("retag").disabled = !state.dataUrl;
    $("generate").disabled = state.busy || !state.dataUrl || !state.tagResult;
  }

  // -- 1. the source image -----------------------------------------------------------------------

  async function useFile(file) {
    if (!file) return;
    clearError();
    state.tagSeq++;
    state.promptSeq++;
    state.dataUrl = null;
    state.tagResult = null;
    resetTags();
    updateButtons();
    setText("file-name", file.name);
    const preview = $("preview");
    let url;
    try {
      url = await readAsDataUrl(file);
    } catch (e) {
      fail(e);
      return;
    }
    if (file.type && file.type.startsWith("image/")) {
      preview.src = url;
      preview.hidden = false;
    } else {
      preview.removeAttribute("src");
      preview.hidden = true;
    }
    state.dataUrl = url;
    updateButtons();
    await tag();
  }

  function thresholdValue() {
    if ($("threshold-auto").checked) return "auto";
    const value = Number($("threshold").value);
    if ($("threshold").value.trim() === "" || !(value >= 0 && value <= 1)) {
      throw new Error("the threshold must be a number between 0 and 1, or auto.");
    }
    return value;
  }

  async function tag() {
    if (!state.dataUrl) return;
    const seq = ++state.tagSeq;
    state.promptSeq++;
    clearError();
    let threshold;
    try {
      threshold = thresholdValue();
    } catch (e) {
      fail(e);
      return;
    }
    state.tagResult = null;
    updateButtons();
    setText("tag-status", "Tagging…");
    try {
      const result = await api("POST", `${API}/tag`, { image: state.dataUrl, threshold });
      if (seq !== state.tagSeq) return;
      if (result.error) throw new ApiError(result.error);
      state.tagResult = result;
      renderTags(result);
      setText("tag-status", `${result.tags.length} tag${result.tags.length === 1 ? "" : "s"}`);
    } catch (e) {
      if (seq !== state.tagSeq) return;
      setText("tag-status", "");
      resetTags();
      fail(e);
      return;
    } finally {
      updateButtons();
    }
    await composePrompt();
  }

  function resetTags() {
    $("tags").hidden = true;
    $("tags").tBodies[0].replaceChildren();
    $("tag-facts").hidden = true;
    for (const id of ["edge-density", "band", "thresholds", "rating", "tag-status"]) setText(id, "");
  }

  function bandText(result) {
    const mode = result.threshold_mode;
    if (mode === "adaptive" || (mode === undefined && result.band_threshold !== undefined)) {
      return `${result.complexity || "?"} → threshold ${fmt(result.band_threshold)} (adaptive)`;
    }
    const band = result.complexity ? `${result.complexity} band not used` : "no band";
    return `${band}; ${mode || "fixed"} threshold ${fmt(result.threshold)}`;
  }

  function renderTags(result) {
    setText("edge-density", fmt(result.edge_density, 4));
    setText("band", bandText(result));
    const thresholds = Object.entries(result.thresholds || {});
    setText(
      "thresholds",
      thresholds.length ? thresholds.map(([k, v]) => `${k} ${fmt(v)}`).join(" · ") : fmt(result.threshold),
    );
    const rating = $("rating");
    rating.replaceChildren();
    const ratings = Object.entries(result.rating || {}).sort((a, b) => b[1] - a[1]);
    if (!ratings.length) rating.textContent = "–";
    ratings.forEach(([name, p], i) => {
      if (i) rating.append(" · ");
      rating.append(el(i === 0 ? "strong" : "span", { text: `${name} ${fmt(p)}` }));
    });
    $("tag-facts").hidden = false;

    const body = $("tags").tBodies[0];
    body.replaceChildren();
    if (!result.tags.length) {
      body.append(el("tr", { className: "empty" }, [el("td", { colspan: 3, text: "No tag passed the threshold." })]));
    }
    for (const t of result.tags) {
      const score = Number(t.score);
      const fill = el("span", { className: "fill" });
      fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
      body.append(
        el("tr", { dataset: { tag: t.name } }, [
          el("td", { className: "name", text: t.name }),
          el("td", { className: `cat cat-${String(t.category).replace(/[^a-z]/gi, "")}`, text: t.category }),
          el("td", { className: "score" }, [
            el("span", { className: "bar", "aria-hidden": "true" }, [fill]),
            el("span", { className: "num", text: fmt(score) }),
          ]),
        ]),
      );
    }
    $("tags").hidden = false;
  }

  // -- 2. the prompt -----------------------------------------------------------------------------

  async function composePrompt() {
    if (!state.tagResult) return;
    const seq = ++state.promptSeq;
    setText("prompt-status", "Composing…");
    try {
      const composed = await api("POST", `${API}/prompt`, { tags: state.tagResult, preset: $("preset").value });
      if (seq !== state.promptSeq) return;
      $("positive").value = composed.positive || "";
      $("negative").value = composed.negative || "";
      const tokens = composed.tokens && composed.tokens.positive;
      let status = tokens ? `${tokens.tokens} tokens (${tokens.counter})` : "";
      if (composed.warnings && composed.warnings.length) status += ` · ${composed.warnings.join(" ")}`;
      setText("prompt-status", status);
    } catch (e) {
      if (seq !== state.promptSeq) return;
      setText("prompt-status", "");
      fail(e);
    }
  }

  // -- 3. variants -------------------------------------------------------------------------------

  async function generate() {
    if (!state.dataUrl || !state.tagResult || state.busy) return;
    clearError();
    let body;
    try {
      body = {
        image: state.dataUrl,
        variants: integerField("variants", "Variants"),
        steps: integerField("steps", "Steps"),
        width: integerField("width", "Width"),
        height: integerField("height", "Height"),
        seed: integerField("seed", "Seed"),
        threshold: thresholdValue(),
        preset: $("preset").value,
        negative_prompt: $("negative").value,
      };
    } catch (e) {
      fail(e);
      return;
    }
    if ($("positive").value.trim()) body.prompt = $("positive").value;
    const seq = ++state.jobSeq;
    state.busy = true;
    updateButtons();
    $("results").hidden = true;
    $("gallery").replaceChildren();
    showJob("Queueing…", 0);
    let started = false;
    try {
      const queued = await api("POST", `${API}/reproduce`, body);
      if (seq !== state.jobSeq) return;
      $("job").dataset.jobId = queued.id;
      started = true;
      await poll(queued.id, seq);
    } catch (e) {
      if (seq === state.jobSeq) {
        if (!started) showJob("Not started", 0); // else the poll has said how it ended
        fail(e);
      }
    } finally {
      if (seq === state.jobSeq) {
        state.busy = false;
        updateButtons();
      }
    }
  }

  async function cancelJob() {
    // the job stops at its next sampling step; the poll then shows it as cancelled
    const id = $("job").dataset.jobId;
    if (!id || !state.busy) return;
    $("cancel").disabled = true;
    try {
      await api("DELETE", `${API}/jobs/${encodeURIComponent(id)}`);
    } finally {
      $("cancel").disabled = false;
    }
  }

  function showJob(text, progress) {
    $("job").hidden = false;
    setText("job-status", text);
    $("progress").value = Math.max(0, Math.min(1, Number(progress) || 0));
  }

  async function poll(id, seq) {
    let misses = 0;
    while (seq === state.jobSeq) {
      let job;
      try {
        job = await api("GET", `${API}/jobs/${encodeURIComponent(id)}`);
        misses = 0;
      } catch (e) {
        // a network hiccup is retried a few times; an answer from the server is final
        if (e instanceof ApiError && e.status === 0 && ++misses < 5) {
          await sleep(POLL_MS * 2);
          continue;
        }
        throw e;
      }
      if (seq !== state.jobSeq) return;
      const status = job.status;
      if (status === "queued") {
        showJob("Queued…", 0);
      } else if (status === "running") {
        const step = job.sampling_steps ? ` · step ${job.sampling_step}/${job.sampling_steps}` : "";
        const sampled = job.sampling_steps && job.sampling_step >= job.sampling_steps;
        const text = sampled ? "Running: sampled, tagging and scoring the variants…" : `Running: ${Math.round((job.progress || 0) * 100)}%${step}`;
        showJob(text, job.progress);
      } else if (status === "done") {
        showJob("Done", 1);
        renderResults(id, job);
        return;
      } else if (status === "failed" || status === "cancelled") {
        showJob(status === "failed" ? "Failed" : "Cancelled", 0);
        throw new ApiError(job.error || `the job was ${status}.`);
      } else {
        throw new ApiError(`the job has an unknown status ${JSON.stringify(status)}.`);
      }
      await sleep(POLL_MS);
    }
  }

  // -- 4. results --------------------------------------------------------------------------------

  const METRICS = [
    ["f1", "F1"],
    ["recall", "Recall"],
    ["precision", "Precision"],
  ];

  function scoreTable(scores) {
    const scorers = ["tagger", "judge"].filter((s) => scores && scores[s]);
    if (!scorers.length && !(scores && scores.clip)) return null;
    const head = el("tr", null, [el("th", { scope: "col", text: "Scorer" }), ...METRICS.map(([, l]) => el("th", { scope: "col", text: l }))]);
    const rows = scorers.map((s) =>
      el("tr", { dataset: { scorer: s } }, [
        el("th", { scope: "row", text: s }),
        ...METRICS.map(([m]) => el("td", { dataset: { metric: m }, text: fmt(scores[s][m]) })),
      ]),
    );
    if (scores.clip) {
      rows.push(
        el("tr", { dataset: { scorer: "clip" } }, [
          el("th", { scope: "row", text: "clip" }),
          el("td", { colspan: METRICS.length, dataset: { metric: "cosine" }, text: `cosine ${fmt(scores.clip.cosine)}` }),
        ]),
      );
    }
    return el("table", { className: "scores" }, [el("thead", null, [head]), el("tbody", null, rows)]);
  }

  function tagList(title, className, items, key) {
    if (!items || !items.length) return null;
    const shown = items.slice(0, MAX_LIST);
    const list = el(
      "ul",
      { className: `taglist ${className}`, "aria-label": title },
      shown.map((x) => el("li", { text: `${x.tag} ${fmt(x[key], 2)}` })),
    );
    if (items.length > shown.length) list.append(el("li", { className: "more", text: `+${items.length - shown.length} more` }));
    return el("div", null, [el("h4", { text: title }), list]);
  }

  function imageOrPlaceholder(src, alt) {
    const img = el("img", { src, alt, loading: "eager", decoding: "async" });
    img.addEventListener("error", () => {
      img.replaceWith(el("div", { className: "placeholder", text: `${alt}: the image did not load.` }));
    });
    return img;
  }

  function renderResults(jobId, job) {
    const report = job.result || {};
    const gallery = $("gallery");
    gallery.replaceChildren();
    const notes = [];
    if (report.status && report.status !== "ok") notes.push(`${report.status}: ${report.message || ""}`.trim());
    if (report.note) notes.push(report.note);
    setText("report-message", notes.join(" "));

    const best = report.best;
    if (best) {
      setText("best", `Best: ${best.id} (seed ${best.seed}), F1 ${fmt(best.f1)}. ${best.why || ""}`.trim());
    } else {
      setText("best", "");
    }
    const link = $("report-link");
    if (job.report_html) {
      link.href = job.report_html;
      link.hidden = false;
    } else {
      link.hidden = true;
    }

    const source = (report.source && report.source.file) || "source.png";
    gallery.append(
      el("figure", { className: "card source", dataset: { variantId: "source" } }, [
        imageOrPlaceholder(jobFileUrl(jobId, source), "Source image"),
        el("figcaption", null, [el("strong", { text: "Source" })]),
      ]),
    );
    for (const v of report.variants || []) {
      const isBest = best && best.id === v.id;
      const media = v.file
        ? imageOrPlaceholder(jobFileUrl(jobId, v.file), `Variant ${v.id}`)
        : el("div", { className: "placeholder", text: v.error || "no image" });
      const tagger = (v.scores && v.scores.tagger) || {};
      gallery.append(
        el("figure", { className: `card variant${isBest ? " is-best" : ""}`, dataset: { variantId: v.id } }, [
          media,
          el("figcaption", null, [
            el("strong", { text: v.id }),
            el("span", { className: "muted", text: ` seed ${v.seed}, round ${v.round}` }),
            isBest ? el("span", { className: "badge", text: "best" }) : null,
          ]),
          v.error && v.file ? el("p", { className: "variant-error", text: v.error }) : null,
          scoreTable(v.scores),
          tagList("Missing", "missing", tagger.missing, "source_score"),
          tagList("Spurious", "spurious", tagger.spurious, "variant_score"),
        ]),
      );
    }
    $("results").hidden = false;
  }

  // -- server facts ------------------------------------------------------------------------------

  async function loadStatus() {
    try {
      const s = await api("GET", `${API}/status`);
      const parts = [];
      if (s.taggers && s.taggers.length) parts.push(`tagger: ${s.taggers.join(", ")}`);
      parts.push(`model: ${s.model || "none"}`);
      setText("server", parts.join(" · "));
      const limits = s.limits || {};
      if (limits.max_variants) $("variants").max = limits.max_variants;
      if (limits.max_steps) $("steps").max = limits.max_steps;
      if (limits.max_size) {
        $("width").max = limits.max_size;
        $("height").max = limits.max_size;
      }
    } catch (e) {
      setText("server", `server status unavailable: ${e.message}`);
    }
  }

  // -- wiring ------------------------------------------------------------------------------------

  function init() {
    const drop = $("drop");
    $("file").addEventListener("change", (e) => {
      const file = e.target.files && e.target.files[0];
      useFile(file).catch(fail);
    });
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (e) => {
        e.preventDefault();
        if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
        drop.classList.add("over");
      });
    }
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (!file) {
        showError("drop a file (an image) here.");
        return;
      }
      useFile(file).catch(fail);
    });
    // a file dropped beside the zone must not make the browser leave the page
    for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());

    const onThresholdMode = () => {
      $("threshold").disabled = $("threshold-auto").checked;
      tag().catch(fail);
    };
    $("threshold-auto").addEventListener("change", onThresholdMode);
    $("threshold-fixed").addEventListener("change", onThresholdMode);
    $("threshold").addEventListener("change", () => tag().catch(fail));
    $("retag").addEventListener("click", () => tag().catch(fail));
    $("preset").addEventListener("change", () => composePrompt().catch(fail));
    $("generate").addEventListener("click", () => generate().catch(fail));
    $("cancel").addEventListener("click", () => cancelJob().catch(fail));
    // the last net: an unexpected rejection is shown, not thrown at the console
    window.addEventListener("unhandledrejection", (e) => {
      e.preventDefault();
      fail(e.reason);
    });
    updateButtons();
    loadStatus();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
