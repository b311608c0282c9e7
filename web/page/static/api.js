// Calls to Tickler's API with the session cookie; every error becomes an ApiError with the problem's detail.

export class ApiError extends Error {
  constructor(status, detail, problem = null) {
    super(detail);
    this.status = status;
    this.problem = problem;
  }
}

const UNREACHABLE = "Tickler cannot be reached. Check your connection; the page keeps trying.";

// A fresh Idempotency-Key. crypto.randomUUID exists in secure contexts only (https, localhost); the page
// may also be served over plain http on a private network, where getRandomValues still works.
export function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function api(method, path, { body, token, idempotencyKey } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, UNREACHABLE);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const detail = data?.detail || `The server answered ${response.status} ${response.statusText}.`;
    throw new ApiError(response.status, detail, data);
  }
  return data;
}
