/**
 * Calls a running `skin serve` through the generated client; exits non-zero on any mismatch.
 * tests/test_clients.py starts the server (API keys, --rate-limit, a small --max-upload-mb) and
 * runs: SKIN_URL=... SKIN_KEY=... SKIN_IMAGE=lesion.png node dist/test/live.js
 *
 * The assignments to annotated constants are the type test: `tsc` refuses to build this file
 * if the generated types stop saying that `label` is a string or `triage.refer` a boolean.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { createSkinClient, retryAfter, type ApiError } from "../src/index.js";

const url = process.env.SKIN_URL ?? "";
const key = process.env.SKIN_KEY ?? "";
const image = new Blob([readFileSync(process.env.SKIN_IMAGE ?? "")], { type: "image/png" });
const skin = createSkinClient({ baseUrl: url, apiKey: key });
const seen: Record<string, unknown> = {};

// The model: typed fields, and the limits this server applies.
const model = await skin.model();
assert.ok(model.data, `GET /v1/model failed: ${JSON.stringify(model.error)}`);
const classes: string[] = model.data.classes;
const rate = String(model.data.serving.rate_limit ?? "");
const allowance = Number(rate.split("/")[0]);
const maxUploadMb = Number(model.data.serving.max_upload_mb);
assert.ok(allowance >= 4, `the server needs --rate-limit of at least 4 (has ${rate})`);
let used = 1;

// A prediction: typed label and triage.
const ok = await skin.predict(image, { filename: "lesion.png", query: { top_k: 2 } });
used += 1;
assert.ok(ok.data, `predict failed: ${JSON.stringify(ok.error)}`);
const label: string = ok.data.prediction.label;
const refer: boolean | undefined = ok.data.prediction.triage?.refer;
const probability: number = ok.data.prediction.probability;
assert.ok(classes.includes(label));
assert.equal(typeof refer, "boolean", "the run has a triage operating point");
assert.ok(probability > 0 && probability <= 1);
assert.equal(ok.data.prediction.top_k.length, 2);
Object.assign(seen, { label, refer });

// 413: an upload over --max-upload-mb.
const big = new Blob([new Uint8Array(Math.ceil(maxUploadMb * 1024 * 1024) + 1024)],
                     { type: "image/png" });
const tooBig = await skin.predict(big, { filename: "big.png" });
used += 1;
assert.equal(tooBig.response.status, 413);
const bigError: ApiError | undefined = tooBig.error;
assert.equal(bigError?.error, "payload_too_large");
seen.e413 = bigError?.error;

// A batch: one answer per image, in order, each typed as a prediction or an error.
const batch = await skin.predictBatch([image, new File([image], "second.png")], {
  filename: "first.png",
});
used += 1;
assert.ok(batch.data, `predict/batch failed: ${JSON.stringify(batch.error)}`);
const names = batch.data.results.map((r) => r.filename);
assert.deepEqual(names, ["first.png", "second.png"]);
for (const item of batch.data.results) {
  const itemLabel: string | undefined = item.prediction?.label;
  assert.ok(itemLabel !== undefined && classes.includes(itemLabel), JSON.stringify(item));
}
seen.batch = batch.data.results.length;

// 401: a wrong key (counted against this address, not against the real key).
const stranger = createSkinClient({ baseUrl: url, apiKey: "not-a-key" });
const denied = await stranger.predict(image);
assert.equal(denied.response.status, 401);
const code: string | undefined = denied.error?.error;
assert.equal(code, "unauthorized");
assert.ok(denied.error?.request_id);
seen.e401 = code;

// 429: use up the allowance; the next call is refused with Retry-After.
while (used < allowance) {
  const r = await skin.model();
  assert.ok(r.data, `call ${used + 1} of ${allowance} refused: ${r.response.status}`);
  used += 1;
}
const limited = await skin.predict(image);
assert.equal(limited.response.status, 429);
assert.equal(limited.error?.error, "rate_limited");
const wait = retryAfter(limited.response);
assert.ok(wait !== null && wait >= 1, "Retry-After in seconds");
assert.equal(limited.response.headers.get("RateLimit-Remaining"), "0");
seen.e429 = limited.error?.error;
seen.retry_after = wait;

console.log(JSON.stringify(seen));
