// The one way the app talks to the HTTP API: the token header, `?dc=` for another
// datacenter, and blocking-query watches. Nothing here touches the DOM.

const TOKEN_KEY = 'registry-ui-token';

/** The ACL token kept in this browser ('' when none). Never put in a URL: URLs end up in
 * logs, history and Referer headers; a header does not. */
export function token() {
  try {
    return localStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

/** An answer that is neither 2xx nor a 404 (which callers read as "nothing there"). */
export class ApiError extends Error {
  constructor(status, text) {
    super(status === 403 ? 'Permission denied: set a token' : `${status}: ${text.trim() || 'error'}`);
    this.status = status;
  }
}

/** The datacenter of the process serving the UI: requests for it carry no `?dc=`. */
let localDc = '';
export function setLocalDc(dc) {
  localDc = dc;
}
export function getLocalDc() {
  return localDc;
}

/** `/v1/kv/` plus a key, each segment escaped (a key may hold `?`, `#`, `%`). */
export function kvPath(key) {
  return '/v1/kv/' + key.split('/').map(encodeURIComponent).join('/');
}

function url(path, params, dc) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === false) continue;
    q.append(k, v === true ? '' : String(v));
  }
  if (dc && dc !== localDc) q.set('dc', dc);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** One request. Resolves to {status, index, data, text}; `data` is the parsed JSON (null
 * for a 404 or an empty body). Rejects with ApiError on any other non-2xx answer. */
export async function request(method, path, { params, dc, body, signal, json = true } = {}) {
  const headers = {};
  const t = token();
  if (t) headers['X-Consul-Token'] = t;
  const resp = await fetch(url(path, params, dc), {
    method,
    headers,
    body,
    signal,
    cache: 'no-store',
    credentials: 'same-origin',
  });
  const text = await resp.text();
  if (!resp.ok && resp.status !== 404) throw new ApiError(resp.status, text);
  const index = Number(resp.headers.get('X-Consul-Index') || 0);
  let data = null;
  if (resp.ok && json && text) data = JSON.parse(text);
  return { status: resp.status, index, data, text };
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}

/** Longest pause between attempts after errors. */
const MAX_BACKOFF_MS = 30000;

/**
 * Keeps `onData` up to date with `path` through blocking queries (Consul's
 * `?index=&wait=`): the first read answers at once, each later one is held by the server
 * until the data changes (or 5 minutes pass), so a quiet registry costs one open request
 * per list, never a polling loop. Errors back off (1 s, doubling, at most 30 s) and are
 * reported through `onError`; the next success calls `onOk`. Stops when `signal` aborts
 * (the user navigated away), which also cancels the request in flight.
 */
export async function watch(path, { params, dc, signal, onData, onError, onOk }) {
  let index = 0;
  let backoff = 0;
  while (!signal.aborted) {
    try {
      const p = { ...params };
      if (index > 0) {
        p.index = index;
        p.wait = '5m';
      }
      const r = await request('GET', path, { params: p, dc, signal });
      if (backoff) onOk?.();
      backoff = 0;
      if (r.index < index) {
        // The index went back (a snapshot restore, another server): start over, as
        // Consul's blocking-query documentation advises, rather than wait for an index
        // that may never come.
        index = 0;
        continue;
      }
      const changed = index === 0 || r.index !== index;
      index = r.index;
      if (changed) onData(r.data, r);
      if (index <= 0) return; // an answer without an index cannot be watched
    } catch (e) {
      if (signal.aborted) return;
      onError?.(e);
      backoff = Math.min(backoff ? backoff * 2 : 1000, MAX_BACKOFF_MS);
      await sleep(backoff, signal);
    }
  }
}
