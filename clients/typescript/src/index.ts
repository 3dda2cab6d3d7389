/**
 * A typed client for `skin serve`: openapi-fetch over the types openapi-typescript generated
 * from the server's OpenAPI schema (src/schema.d.ts; regenerate with
 * `python clients/generate.py`). Every call returns `{ data, error, response }`: `data` typed
 * by the route's 200 answer, `error` by its documented error answers (`{ error, message,
 * request_id }`), `response` the raw Response (headers such as Retry-After).
 *
 *   const skin = createSkinClient({ baseUrl: "http://127.0.0.1:8000", apiKey: "..." });
 *   const { data, error } = await skin.predict(blob, { filename: "lesion.jpg" });
 *   if (data) console.log(data.prediction.label, data.prediction.triage?.refer);
 *   else console.error(error?.error, error?.message);
 */
import createClient, { type Client, type ClientOptions } from "openapi-fetch";

import type { components, paths } from "./schema.js";

export type { components, paths } from "./schema.js";

/** Schemas by name: `Schemas["PredictResponse"]`, `Schemas["ErrorOut"]`, ... */
export type Schemas = components["schemas"];
/** The one error shape of every failed call. */
export type ApiError = Schemas["ErrorOut"];
/** Query parameters of a classification (`top_k`, `age`, `sex`, `site`). */
export type PredictQuery = NonNullable<paths["/v1/predict"]["post"]["parameters"]["query"]>;

export interface SkinClientOptions extends ClientOptions {
  /** Sent as X-API-Key on every request (when the server has keys). */
  apiKey?: string;
}

export interface ImageOptions {
  /** The file name the server records for a Blob that is not a File (default "image"). */
  filename?: string;
  query?: PredictQuery;
  signal?: AbortSignal;
}

/** The raw openapi-fetch client (every route, typed by path) plus upload helpers. */
export interface SkinClient extends Client<paths, "application/json"> {
  /** POST /v1/predict with one image (multipart field `file`). */
  predict(image: Blob, options?: ImageOptions): ReturnType<typeof predictCall>;
  /** POST /v1/predict/batch with several images (multipart field `files`). */
  predictBatch(images: Blob[], options?: ImageOptions): ReturnType<typeof batchCall>;
  /** GET /v1/model: the served run's classes, metrics, calibration and serving limits. */
  model(): ReturnType<typeof modelCall>;
}

function form(field: string, images: Blob[], filename: string): FormData {
  const body = new FormData();
  for (const image of images) {
    // A File keeps its own name; a plain Blob gets the given one.
    const name = image instanceof File && image.name ? image.name : filename;
    body.append(field, image, name);
  }
  return body;
}

// The multipart bodies are built here (openapi-fetch passes FormData through untouched); the
// schema's request types say `string` for binary parts, hence the casts.
function predictCall(client: Client<paths, "application/json">, image: Blob, o: ImageOptions = {}) {
  return client.POST("/v1/predict", {
    params: { query: o.query },
    body: form("file", [image], o.filename ?? "image") as never,
    signal: o.signal,
  });
}

function batchCall(client: Client<paths, "application/json">, images: Blob[], o: ImageOptions = {}) {
  return client.POST("/v1/predict/batch", {
    params: { query: o.query },
    body: form("files", images, o.filename ?? "image") as never,
    signal: o.signal,
  });
}

function modelCall(client: Client<paths, "application/json">) {
  return client.GET("/v1/model");
}

/** A client for the server at `baseUrl`. */
export function createSkinClient(options: SkinClientOptions): SkinClient {
  const { apiKey, headers, ...rest } = options;
  const merged = new Headers(headers as HeadersInit | undefined);
  if (apiKey) merged.set("X-API-Key", apiKey);
  const client = createClient<paths, "application/json">({ ...rest, headers: merged });
  return Object.assign(client, {
    predict: (image: Blob, o?: ImageOptions) => predictCall(client, image, o),
    predictBatch: (images: Blob[], o?: ImageOptions) => batchCall(client, images, o),
    model: () => modelCall(client),
  });
}

/** Seconds the server asks to wait before retrying (429 and 503 answers), or null. */
export function retryAfter(response: Response): number | null {
  const value = response.headers.get("Retry-After");
  return value !== null && /^\d+$/.test(value) ? Number(value) : null;
}
