// DOM helpers. Text goes in through textContent / text nodes only, never innerHTML: every
// name, tag, meta value, check output and KV value comes from the registry's users.

/** An element: `h('a', {href: '#/', class: 'x'}, 'text', child)`. Attributes starting with
 * `on` are listeners; `text` sets textContent; `dataset` sets data-* attributes. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** A health status as a badge: its word is always there (not colour alone). */
export function statusBadge(status) {
  const s = ['passing', 'warning', 'critical'].includes(status) ? status : 'unknown';
  return h('span', { class: `badge ${s}`, dataset: { status: s } }, s);
}

/** Counts of passing / warning / critical checks, each shown only when non-zero. */
export function healthCounts(passing, warning, critical) {
  const part = (n, s, sym) =>
    n > 0 && h('span', { class: `badge ${s}`, title: `${n} ${s}`, 'aria-label': `${n} ${s}` }, `${sym} ${n}`);
  const parts = [part(passing, 'passing', '✓'), part(warning, 'warning', '!'), part(critical, 'critical', '✕')];
  if (!passing && !warning && !critical) parts.push(h('span', { class: 'muted' }, 'no checks'));
  return h('span', { class: 'health' }, parts);
}

/** The worst of passing / warning / critical. */
export function worst(statuses) {
  if (statuses.includes('critical')) return 'critical';
  if (statuses.includes('warning')) return 'warning';
  return 'passing';
}

/** `#/dc/<dc>/<parts...>`, each part escaped. */
export function route(dc, ...parts) {
  return '#/dc/' + [dc, ...parts].map(encodeURIComponent).join('/');
}

/** Rows built per frame: small enough that a frame stays well under 50 ms on a slow phone. */
const CHUNK = 150;

/**
 * Fills `tbody` with a row per item, CHUNK rows per animation frame, so a list of
 * thousands never blocks the page: the first rows show at once and input stays responsive.
 * A refresh builds into a detached body and swaps it in when complete (no flicker, no
 * half-empty table); focus on a row's link survives the swap (matched by `data-key`).
 * `filter(row)` decides each new row's `hidden`. Returns the live tbody (use it to
 * re-filter); a later call on the same table cancels an unfinished one.
 */
export function fillRows(table, items, makeRow, filter) {
  const old = table.tBodies[0];
  const fresh = document.createElement('tbody');
  const gen = (table._fillGen = (table._fillGen || 0) + 1);
  const first = !old || old.rows.length === 0;
  if (first) {
    if (old) old.replaceWith(fresh);
    else table.append(fresh);
  }
  let i = 0;
  const step = () => {
    if (table._fillGen !== gen) return;
    const frag = document.createDocumentFragment();
    const end = Math.min(i + CHUNK, items.length);
    for (; i < end; i++) {
      const row = makeRow(items[i]);
      if (filter) row.hidden = !filter(row);
      frag.append(row);
    }
    fresh.append(frag);
    if (i < items.length) {
      requestAnimationFrame(step);
    } else {
      if (!first && old.isConnected) {
        const focusKey = document.activeElement?.closest?.('tr')?.dataset?.key;
        old.replaceWith(fresh);
        if (focusKey) {
          const again = [...fresh.rows].find((r) => r.dataset.key === focusKey);
          again?.querySelector('a, button')?.focus();
        }
      }
      table.dataset.rendered = String(items.length);
    }
  };
  step();
  return fresh;
}

/** A table with a header row and an empty body for fillRows. */
export function table(caption, headers, cls) {
  return h('table', { class: cls || 'list' },
    h('caption', { class: 'sr-only' }, caption),
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody'));
}

/** `key: value` pairs as a definition list ("none" when empty). */
export function metaList(meta) {
  const entries = Object.entries(meta || {});
  if (!entries.length) return h('span', { class: 'muted' }, 'none');
  return h('dl', { class: 'meta' }, entries.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

export function tagList(tags) {
  if (!tags || !tags.length) return h('span', { class: 'muted' }, '—');
  return h('span', { class: 'tags' }, tags.map((t) => h('span', { class: 'tag' }, t)));
}
