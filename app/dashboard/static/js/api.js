// Calls to the /v1 API with the key kept in sessionStorage (entered once per browser session).

const KEY = "whetstone.apiKey";

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key.trim());
export const forgetKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${getKey()}`, ...extra };
}

async function raise(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  const error = new ApiError(response.status, body);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("whetstone:unauthorized", { detail: error }));
  throw error;
}

/** JSON request to /v1`path`; resolves to the parsed body, rejects with an ApiError. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/v1${path}`, init);
  if (!response.ok) await raise(response);
  return response.json();
}

/** A raw streaming request (for SSE); rejects with an ApiError when the answer is not 2xx. */
export async function stream(path, { method = "GET", body, signal, lastEventId } = {}) {
  const extra = { accept: "text/event-stream" };
  if (body !== undefined) extra["content-type"] = "application/json";
  if (lastEventId) extra["Last-Event-ID"] = String(lastEventId);
  const response = await fetch(`/v1${path}`, {
    method, headers: headers(extra), body: body === undefined ? undefined : JSON.stringify(body), signal,
  });
  if (!response.ok) await raise(response);
  return response;
}

/** Multipart upload through XMLHttpRequest, for its upload progress events. */
export function uploadFile(file, purpose, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    xhr.setRequestHeader("Authorization", `Bearer ${getKey()}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, { error: { message: "The upload failed: no answer from the server." } }));
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** Fetch /v1`path` with the key and hand it to the browser as a download. */
export async function download(path, filename) {
  const response = await fetch(`/v1${path}`, { headers: headers() });
  if (!response.ok) await raise(response);
  const disposition = response.headers.get("content-disposition") || "";
  const named = /filename="?([^";]+)"?/.exec(disposition);
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement("a"), { href: url, download: (named && named[1]) || filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
