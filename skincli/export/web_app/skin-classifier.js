// Classify a skin-lesion image in the browser with the exported model; nothing leaves the device.
//
//   import { SkinClassifier } from "./skin-classifier.js";
//   const clf = await SkinClassifier.load("./model.tflite");
//   const r = await clf.classify(fileOrBlobOrImage);
//   // r = {label, probabilities: {class: p}, uncertain, triage: {score, threshold, refer} | null,
//   //      disclaimer}
//
// The runtime is MediaPipe Tasks Vision (vendored in ./runtime, Apache-2.0). The model's own
// associated file skin.json (read from the .tflite) carries the classes, the uncertain and
// referral thresholds and the decision rule. Images are resized here the way `skin predict`
// resizes them (Pillow's antialiased bilinear filter, no crop, EXIF orientation applied,
// transparency on white), so the browser gives the same answer as the command line.

import { ImageClassifier } from "./runtime/vision_bundle.js";

const RUNTIME = new URL("./runtime/wasm/", import.meta.url);
const ASSOCIATED = "skin.json";

export class SkinClassifier {
  /** Load the model at `url` (default: model.tflite beside this module). */
  static async load(url = new URL("./model.tflite", import.meta.url)) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`Could not load the model ${url}: HTTP ${response.status}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const info = JSON.parse(new TextDecoder().decode(associatedFile(bytes, ASSOCIATED)));
    const classifier = await ImageClassifier.createFromOptions(
      {
        wasmLoaderPath: new URL("vision_wasm_internal.js", RUNTIME).href,
        wasmBinaryPath: new URL("vision_wasm_internal.wasm", RUNTIME).href,
      },
      {
        baseOptions: { modelAssetBuffer: bytes, delegate: "CPU" },
        runningMode: "IMAGE",
        maxResults: -1,
        scoreThreshold: 0,
      },
    );
    return new SkinClassifier(classifier, info);
  }

  constructor(classifier, info) {
    this.classifier = classifier;
    this.info = info; // the model's skin.json
    this.size = info.input.shape[1];
  }

  /** Classify an image (File, Blob, HTMLImageElement, ImageBitmap, canvas or ImageData). */
  async classify(image) {
    const pixels = await modelPixels(image, this.size);
    const result = this.classifier.classify(pixels);
    const classes = this.info.classes;
    const probs = new Array(classes.length).fill(0);
    for (const c of result.classifications[0].categories) probs[c.index] = c.score;
    return this.answer(probs);
  }

  /** The answer from the output probabilities, as `skin predict` gives it. */
  answer(probs) {
    const { classes, decision, triage, uncertain_threshold: uncertain } = this.info;
    let top = 0;
    for (let i = 1; i < probs.length; i++) if (probs[i] > probs[top]) top = i;
    const probabilities = Object.fromEntries(classes.map((c, i) => [c, probs[i]]));
    return {
      label: classes[top],
      probabilities,
      uncertain: uncertain != null && probs[top] < uncertain,
      triage: referral(probs, classes, decision, triage),
      disclaimer: this.info.disclaimer,
    };
  }

  close() {
    this.classifier.close();
  }
}

// The referral threshold was fitted on calibrated probabilities: undo a decision rule's weights.
function referral(probs, classes, decision, triage) {
  if (!triage || triage.threshold == null) return null;
  const w = classes.map((c) => (decision && decision.weights ? decision.weights[c] : 1) || 1);
  const raw = probs.map((q, i) => q / w[i]);
  const sum = raw.reduce((a, b) => a + b, 0) || 1;
  const scored = new Set([
    ...(triage.malignant || []),
    ...(triage.count_premalignant ? triage.premalignant || [] : []),
  ]);
  const score = classes.reduce((s, c, i) => s + (scored.has(c) ? raw[i] / sum : 0), 0);
  return { score, threshold: triage.threshold, refer: score >= triage.threshold };
}

// --- pixels ----------------------------------------------------------------------------------

async function modelPixels(image, size) {
  let source = image;
  if (typeof Blob !== "undefined" && image instanceof Blob) {
    if (image.type && !image.type.startsWith("image/")) {
      throw new Error(`Not an image: the file's type is ${image.type}; give a JPEG or PNG photo`);
    }
    try {
      source = await createImageBitmap(image, { imageOrientation: "from-image" });
    } catch {
      throw new Error("Not an image: the file could not be decoded; give a JPEG or PNG photo");
    }
  } else if (typeof HTMLImageElement !== "undefined" && image instanceof HTMLImageElement) {
    if (!image.complete || !image.naturalWidth) {
      throw new Error("The image has not loaded (or could not be decoded)");
    }
  } else if (!isDrawable(image)) {
    throw new TypeError(
      "classify() takes a File, Blob, HTMLImageElement, ImageBitmap, canvas or ImageData",
    );
  }
  const rgba = toRgba(source);
  return resizeBilinear(rgba, size);
}

function isDrawable(x) {
  return (
    (typeof ImageBitmap !== "undefined" && x instanceof ImageBitmap) ||
    (typeof ImageData !== "undefined" && x instanceof ImageData) ||
    (typeof HTMLCanvasElement !== "undefined" && x instanceof HTMLCanvasElement) ||
    (typeof OffscreenCanvas !== "undefined" && x instanceof OffscreenCanvas)
  );
}

// RGBA pixels at the image's own size, composited on white (as `skin` does with transparency).
function toRgba(source) {
  if (typeof ImageData !== "undefined" && source instanceof ImageData) {
    return onWhite(source);
  }
  const w = source.naturalWidth || source.width;
  const h = source.naturalHeight || source.height;
  if (!w || !h) throw new Error("The image is empty");
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  ctx.drawImage(source, 0, 0);
  return ctx.getImageData(0, 0, w, h);
}

function onWhite(img) {
  const d = new Uint8ClampedArray(img.data);
  for (let i = 0; i < d.length; i += 4) {
    const a = d[i + 3] / 255;
    if (a < 1) for (let k = 0; k < 3; k++) d[i + k] = Math.round(d[i + k] * a + 255 * (1 - a));
    d[i + 3] = 255;
  }
  return new ImageData(d, img.width, img.height);
}

// Pillow's Image.resize(BILINEAR) for 8-bit images, pass for pass: fixed-point coefficients
// (22 bits), horizontal pass first, rounded to 8 bits between the passes.
const BITS = 22;
const ONE = 2 ** BITS;

function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filterscale; // the triangle filter's support is 1
  const ss = 1 / filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1 ? 1 - t : 0;
      k.push(w);
      ww += w;
    }
    out.push({ xmin, k: k.map((w) => Math.trunc((ww ? w / ww : 0) * ONE + 0.5)) });
  }
  return out;
}

function clip8(ss) {
  const v = Math.floor(ss / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function resizeBilinear(img, size) {
  const { width: w, height: h } = img;
  let src = img.data;
  let sw = w;
  if (w !== size) {
    const cs = coefficients(w, size);
    const dst = new Uint8ClampedArray(size * h * 4);
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < size; xx++) {
        const { xmin, k } = cs[xx];
        for (let c = 0; c < 3; c++) {
          let ss = ONE / 2;
          for (let x = 0; x < k.length; x++) ss += src[(y * w + xmin + x) * 4 + c] * k[x];
          dst[(y * size + xx) * 4 + c] = clip8(ss);
        }
        dst[(y * size + xx) * 4 + 3] = 255;
      }
    }
    src = dst;
    sw = size;
  }
  if (h !== size) {
    const cs = coefficients(h, size);
    const dst = new Uint8ClampedArray(size * size * 4);
    for (let yy = 0; yy < size; yy++) {
      const { xmin: ymin, k } = cs[yy];
      for (let x = 0; x < size; x++) {
        for (let c = 0; c < 3; c++) {
          let ss = ONE / 2;
          for (let y = 0; y < k.length; y++) ss += src[((ymin + y) * sw + x) * 4 + c] * k[y];
          dst[(yy * size + x) * 4 + c] = clip8(ss);
        }
        dst[(yy * size + x) * 4 + 3] = 255;
      }
    }
    src = dst;
  }
  return new ImageData(new Uint8ClampedArray(src), size, size);
}

// --- the model's associated files (an uncompressed zip appended to the .tflite) -------------

function associatedFile(bytes, name) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let eocd = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 65557); i--) {
    if (view.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error("The model has no associated files: export it with `skin export`");
  const count = view.getUint16(eocd + 10, true);
  let p = view.getUint32(eocd + 16, true);
  const decoder = new TextDecoder();
  for (let n = 0; n < count; n++) {
    const size = view.getUint32(p + 20, true);
    const nameLen = view.getUint16(p + 28, true);
    const extra = view.getUint16(p + 30, true);
    const comment = view.getUint16(p + 32, true);
    const local = view.getUint32(p + 42, true);
    if (decoder.decode(bytes.subarray(p + 46, p + 46 + nameLen)) === name) {
      if (view.getUint16(p + 10, true) !== 0) throw new Error(`${name} is compressed`);
      const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
      return bytes.subarray(start, start + size);
    }
    p += 46 + nameLen + extra + comment;
  }
  throw new Error(`The model has no ${name}: export it with \`skin export\``);
}
