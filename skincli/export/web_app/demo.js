// The demo page: drop an image or take a photo; the classifier runs on this device.
import { SkinClassifier } from "./skin-classifier.js";

const $ = (id) => document.getElementById(id);
let clf = null;

function show(id, on) {
  $(id).hidden = !on;
}

async function run(file) {
  show("error", false);
  if (!clf) return;
  $("photo").src = URL.createObjectURL(file);
  show("preview", true);
  try {
    const r = await clf.classify(file);
    $("label").textContent = `${r.label} (${(100 * r.probabilities[r.label]).toFixed(1)}%)`;
    const t = r.triage;
    $("triage").textContent = t
      ? `${t.refer ? "Refer" : "No referral suggested"}: malignancy score ` +
        `${t.score.toFixed(3)} (threshold ${t.threshold.toFixed(3)})`
      : "No referral threshold for this model.";
    $("triage").className = t && t.refer ? "refer" : "";
    show("uncertain", r.uncertain);
    const body = $("probs").tBodies[0];
    body.replaceChildren(
      ...Object.entries(r.probabilities)
        .sort((a, b) => b[1] - a[1])
        .map(([c, p]) => {
          const row = document.createElement("tr");
          for (const text of [c, `${(100 * p).toFixed(1)}%`]) {
            const cell = document.createElement("td");
            cell.textContent = text;
            row.append(cell);
          }
          return row;
        }),
    );
    show("result", true);
  } catch (err) {
    show("result", false);
    $("error").textContent = err.message;
    show("error", true);
  }
}

for (const id of ["file", "camera"]) {
  $(id).addEventListener("change", (e) => e.target.files[0] && run(e.target.files[0]));
}
const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) run(e.dataTransfer.files[0]);
});

try {
  clf = await SkinClassifier.load(new URL("./model.tflite", import.meta.url));
  window.skinClassifier = clf; // for scripted use and tests
  $("status").textContent = "Ready.";
  $("disclaimer").textContent = clf.info.disclaimer;
  $("model").textContent = `Model ${clf.info.model.version}, classes: ${clf.info.classes.join(", ")}`;
} catch (err) {
  $("status").textContent = `The model could not be loaded: ${err.message}`;
}
