// The clinician page: send one image to /v1/predict, then /v1/explain for the heat map.
// Plain JavaScript, no framework, no external resources.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "skin-api-key";
  let generation = 0; // ignore answers for an image that was replaced meanwhile
  let previewUrl = null;
  let inputSize = 0; // the model's input side (from /v1/model), for on-device downscaling
  let stream = null; // the live camera, while its view is open
  // A photo is downscaled on the device until its shorter side is this (or twice the model's
  // input side, if larger): a 12-megapixel phone photo becomes ~1.3 megapixels, still more
  // than the model and the heat map use, and uploads in a fraction of the time.
  const UPLOAD_SIDE = 1024;

  function headers() {
    const key = $("api-key").value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  function setStatus(text) { $("status").textContent = text; }

  function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  async function readJson(response) {
    try { return await response.json(); } catch (e) { return null; }
  }

  function errorText(response, body) {
    if (body && body.message) {
      const id = body.request_id ? " (request " + body.request_id + ")" : "";
      if (response.status === 401) {
        $("key-box").open = true;
        return "This server needs an API key: enter it under \"API key\" and try again.";
      }
      return body.message + id;
    }
    return "The server answered " + response.status + " " + response.statusText;
  }

  async function loadModelInfo() {
    try {
      const r = await fetch("/v1/model", { headers: headers() });
      const body = await readJson(r);
      if (r.ok && body) {
        inputSize = body.input_size || 0;
        $("model-line").textContent = "Model " + body.version + " (" + body.arch + ", " +
          body.classes.length + " classes)";
        if (body.disclaimer) { $("disclaimer").textContent = body.disclaimer; }
        showPatientFields(body.metadata_inputs);
        // Answered without a key: this server needs none, so do not offer a key box.
        if (!$("api-key").value.trim()) { $("key-box").hidden = true; }
        if (body.serving && body.serving.prediction_log === false) {
          $("privacy").textContent = "Images are sent only to this server; it keeps " +
            "nothing once it has answered.";
        }
      } else if (r.status === 401) {
        $("model-line").textContent = "This server requires an API key.";
        $("key-box").open = true;
      } else {
        $("model-line").textContent = errorText(r, body);
      }
    } catch (e) {
      $("model-line").textContent = "The server cannot be reached.";
    }
  }

  // A model trained with the patient's metadata: offer its fields (values it knows).
  function showPatientFields(inputs) {
    $("patient-box").hidden = !inputs;
    if (!inputs) return;
    for (const [field, values] of [["sex", inputs.sex], ["site", inputs.site]]) {
      const select = $("patient-" + field);
      while (select.options.length > 1) select.remove(1);
      for (const v of values || []) select.add(new Option(v, v));
    }
  }

  function patientQuery() {
    if ($("patient-box").hidden) return "";
    let q = "";
    for (const field of ["age", "sex", "site"]) {
      const v = $("patient-" + field).value.trim();
      if (v) q += "&" + field + "=" + encodeURIComponent(v);
    }
    return q;
  }

  function pct(p) { return (100 * p).toFixed(1) + " %"; }

  function renderBars(probabilities, top) {
    const list = $("bars");
    list.replaceChildren();
    const entries = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
    for (const [label, p] of entries) {
      const li = document.createElement("li");
      li.dataset.label = label;
      if (label === top) li.classList.add("top");
      const name = document.createElement("span");
      name.className = "bar-label";
      name.textContent = label;
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("role", "img");
      track.setAttribute("aria-label", label + " " + pct(p));
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = Math.max(0, Math.min(100, 100 * p)).toFixed(1) + "%";
      track.appendChild(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = pct(p);
      li.append(name, track, value);
      list.appendChild(li);
    }
  }

  // Refer / no referral suggested from the malignancy score (GET /v1/model/card explains
  // the threshold): shown whatever the top class is, so "nevus 82 %" with a high melanoma
  // probability still says "refer".
  function renderTriage(t) {
    const box = $("triage");
    if (!t) { box.hidden = true; return; }
    box.dataset.refer = String(t.refer);
    $("triage-decision").textContent = t.refer ? "Refer" : "No referral suggested";
    $("triage-detail").textContent = " \u2014 malignancy score " + pct(t.malignancy_score) +
      (t.refer ? " \u2265 " : " < ") + "referral threshold " + pct(t.threshold) +
      " (set for " + Math.round(100 * (t.target_sensitivity || 0)) +
      " % sensitivity on validation images; see the model card)";
    box.hidden = false;
  }

  // Answered, or deferred to a dermatologist, at the run's operating point (absent when the
  // run has none). Independent of triage: a deferred image can still say "refer" above.
  function renderDeferral(d) {
    const box = $("deferral");
    if (!d) { box.hidden = true; return; }
    box.dataset.deferred = String(d.deferred);
    $("deferral-decision").textContent = d.deferred ? "Deferred to a dermatologist" : "Answered";
    $("deferral-detail").textContent = " \u2014 top probability " + pct(d.confidence) +
      (d.threshold === null ? " (this class is never answered alone)" :
        (d.deferred ? " < " : " \u2265 ") + "threshold " + pct(d.threshold) + " for " +
        d.predicted) + " (operating point for " + Math.round(100 * (d.target || 0)) +
      " % balanced accuracy on validation images)" +
      (d.differential && d.differential.length ?
        "; differential: " + d.differential.join(", ") : "");
    box.hidden = false;
  }

  function renderPrediction(body, sentNote) {
    const p = body.prediction;
    $("label").textContent = p.label;
    $("probability").textContent = pct(p.probability);
    $("uncertain").hidden = !p.uncertain;
    $("result").dataset.uncertain = String(p.uncertain);
    const warnings = $("warnings");
    warnings.replaceChildren();
    for (const text of p.warnings || []) {
      const li = document.createElement("li");
      li.textContent = text;
      warnings.appendChild(li);
    }
    warnings.hidden = !(p.warnings && p.warnings.length);
    renderBars(p.probabilities, p.label);
    renderTriage(p.triage);
    renderDeferral(p.deferral);
    if (p.disclaimer) { $("disclaimer").textContent = p.disclaimer; }
    $("meta").textContent = "Model " + body.model.version + " \u00b7 decision rule " +
      (p.decision || "balanced") + " \u00b7 " + body.latency_ms +
      " ms \u00b7 request " + body.request_id + " \u00b7 image SHA-256 " +
      p.image_sha256.slice(0, 12) + "\u2026" + (sentNote ? " \u00b7 " + sentNote : "");
    $("result").hidden = false;
  }

  async function explain(file, gen, label) {
    const form = new FormData();
    form.append("file", file, file.name);
    const img = $("heatmap");
    try {
      // The heat map of the class shown (the decision rule or the patient's metadata may
      // make it differ from the image model's own top class).
      const r = await fetch("/v1/explain?format=json&target=" + encodeURIComponent(label),
                            { method: "POST", headers: headers(), body: form });
      const body = await readJson(r);
      if (gen !== generation) return;
      if (!r.ok || !body) {
        $("heatmap-status").textContent = "No heat map: " + errorText(r, body);
        return;
      }
      img.onload = () => {
        if (gen !== generation) return;
        img.hidden = false;
        img.dataset.ready = "true";
        $("heatmap-status").textContent = "";
      };
      img.src = "data:image/png;base64," + body.overlay_png_base64;
      $("heatmap-caption").textContent = "Where the model looked for \u201c" + body.target +
        "\u201d (Grad-CAM)";
    } catch (e) {
      if (gen === generation) $("heatmap-status").textContent = "No heat map: the server cannot be reached.";
    }
  }

  // A large photo, redrawn smaller on this device (JPEG); anything else (small images, DICOM,
  // files the browser cannot decode) is sent as it is, and the server judges it.
  function fitSide() { return Math.max(UPLOAD_SIDE, 2 * inputSize); }

  async function fitForUpload(file) {
    const side = fitSide();
    let bitmap;
    try { bitmap = await createImageBitmap(file); } catch (e) { return { file, note: "" }; }
    const w = bitmap.width, h = bitmap.height;
    const scale = side / Math.min(w, h);
    if (scale >= 1) { bitmap.close(); return { file, note: "" }; }
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(w * scale));
    canvas.height = Math.max(1, Math.round(h * scale));
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    const blob = await new Promise((done) => canvas.toBlob(done, "image/jpeg", 0.92));
    if (!blob) return { file, note: "" };
    const name = (file.name || "photo").replace(/\.[^.]*$/, "") + ".jpg";
    return { file: new File([blob], name, { type: "image/jpeg" }),
             note: "sent " + canvas.width + "\u00d7" + canvas.height + " px, downscaled on " +
                   "this device from " + w + "\u00d7" + h };
  }

  async function analyse(original) {
    if (!original) return;
    const gen = ++generation;
    setStatus("Preparing " + original.name + "\u2026");
    const { file, note } = await fitForUpload(original);
    if (gen !== generation) return;
    showError("");
    $("result").hidden = true;
    $("heatmap").hidden = true;
    delete $("heatmap").dataset.ready;
    $("heatmap").removeAttribute("src");
    $("heatmap-status").textContent = "Computing heat map\u2026";
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    $("preview").src = previewUrl;
    setStatus("Analysing " + file.name + "\u2026");
    const form = new FormData();
    form.append("file", file, file.name);
    let r, body;
    try {
      r = await fetch("/v1/predict?top_k=1000" + patientQuery(),
                      { method: "POST", headers: headers(), body: form });
      body = await readJson(r);
    } catch (e) {
      if (gen === generation) { setStatus(""); showError("The server cannot be reached."); }
      return;
    }
    if (gen !== generation) return;
    if (!r.ok || !body) {
      setStatus("");
      showError(errorText(r, body));
      return;
    }
    setStatus("");
    renderPrediction(body, note);
    explain(file, gen, body.prediction.label);
  }

  // The live camera (getUserMedia): for browsers where "Take photo" only chooses a file.
  function stopCamera() {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    $("camera-view").srcObject = null;
    $("camera").hidden = true;
  }

  async function startCamera() {
    showError("");
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: false, video: {
        facingMode: "environment", width: { ideal: 1920 }, height: { ideal: 1080 } } });
    } catch (e) {
      showError("The camera cannot be used: " + (e.message || e.name) +
                ". Use \u201cTake photo\u201d or choose a file instead.");
      return;
    }
    $("camera-view").srcObject = stream;
    $("camera").hidden = false;
  }

  function shoot() {
    const video = $("camera-view");
    if (!stream || !video.videoWidth) return; // no frame yet
    // Drawn straight at the upload size (see fitForUpload): one JPEG encoding, not two.
    const scale = Math.min(1, fitSide() / Math.min(video.videoWidth, video.videoHeight));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(video.videoWidth * scale));
    canvas.height = Math.max(1, Math.round(video.videoHeight * scale));
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
    stopCamera();
    canvas.toBlob((blob) => {
      if (blob) analyse(new File([blob], "camera-" + Date.now() + ".jpg", { type: "image/jpeg" }));
    }, "image/jpeg", 0.92);
  }

  function init() {
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) $("api-key").value = saved;
    $("api-key").addEventListener("change", () => {
      sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
      loadModelInfo();
    });
    $("file-input").addEventListener("change", (e) => {
      const file = e.target.files[0];
      e.target.value = ""; // choosing the same file again (e.g. after entering a key) re-runs
      analyse(file);
    });
    $("photo-input").addEventListener("change", (e) => {
      const file = e.target.files[0];
      e.target.value = "";
      analyse(file);
    });
    // getUserMedia exists only in a secure context (https, or this machine).
    if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
      $("camera-start").hidden = false;
      $("camera-start").addEventListener("click", startCamera);
      $("camera-shoot").addEventListener("click", shoot);
      $("camera-stop").addEventListener("click", stopCamera);
    }
    const zone = $("dropzone");
    ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => {
      e.preventDefault(); zone.classList.add("dragging");
    }));
    ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (e) => {
      e.preventDefault(); zone.classList.remove("dragging");
    }));
    zone.addEventListener("drop", (e) => {
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) analyse(file);
    });
    // A file dropped outside the zone must not make the browser navigate away.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    loadModelInfo();
  }

  init();
})();
