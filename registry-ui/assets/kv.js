// The KV browser: folders by `/` (`?keys&separator=/`), one key's value, create, edit with
// check-and-set, delete.
import { watch, request, kvPath } from './api.js';
import { h, clear, route } from './dom.js';

/** The UI's link to a KV folder (ends with `/`) or key. */
export function kvRoute(dc, key) {
  return route(dc, 'kv') + '/' + key.split('/').map(encodeURIComponent).join('/');
}

/** The folder that holds `key` ('' for the root). */
function parentOf(key) {
  const trimmed = key.endsWith('/') ? key.slice(0, -1) : key;
  const at = trimmed.lastIndexOf('/');
  return at < 0 ? '' : trimmed.slice(0, at + 1);
}

/** Links to the root and each folder above `key`. */
function crumbs(dc, key) {
  const nav = h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: kvRoute(dc, '') }, 'Key/Value'), ' / ');
  const parts = key.split('/').filter(Boolean);
  const upto = key.endsWith('/') ? parts.length : parts.length - 1;
  let prefix = '';
  for (let i = 0; i < upto; i++) {
    prefix += parts[i] + '/';
    nav.append(h('a', { href: kvRoute(dc, prefix) }, parts[i]), ' / ');
  }
  return nav;
}

/** The text of a KV value (base64 on the wire); binary values stay base64, said so. */
function decodeValue(b64) {
  if (b64 === null || b64 === undefined) return { text: '', binary: false };
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  try {
    return { text: new TextDecoder('utf-8', { fatal: true }).decode(bytes), binary: false };
  } catch {
    return { text: b64, binary: true, size: bytes.length };
  }
}

function message(el, text, kind) {
  clear(el).append(text);
  el.className = `message ${kind}`;
  el.hidden = !text;
}

export function folderPage(ctx, prefix) {
  const listEl = h('ul', { class: 'kv-list', id: 'kv-list' }, h('li', { class: 'muted' }, 'Loading…'));
  const msg = h('p', { class: 'message', role: 'status', hidden: true });
  const nameInput = h('input', { id: 'kv-new-key', required: true, autocomplete: 'off', spellcheck: 'false' });
  const valueInput = h('textarea', { id: 'kv-new-value', rows: 6, spellcheck: 'false' });
  const form = h('form', { class: 'card kv-form', id: 'kv-create', hidden: true },
    h('h2', {}, 'Create a key'),
    h('label', { for: 'kv-new-key' }, `Key (under ${prefix || 'the root'}; end with / for a folder)`), nameInput,
    h('label', { for: 'kv-new-value' }, 'Value'), valueInput,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', id: 'kv-create-save', class: 'primary' }, 'Save'),
      h('button', { type: 'button', onclick: () => { form.hidden = true; } }, 'Cancel')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const key = prefix + nameInput.value.trim().replace(/^\/+/, '');
    if (key === prefix) return message(msg, 'Give the key a name.', 'error');
    try {
      // cas=0: create only; an existing key is never overwritten from this form.
      const r = await request('PUT', kvPath(key), { params: { cas: 0 }, dc: ctx.dc, body: valueInput.value });
      if (r.data === true) {
        location.hash = kvRoute(ctx.dc, key);
      } else {
        message(msg, `A key named ${key} already exists: open it to edit it.`, 'error');
      }
    } catch (e) {
      message(msg, e.message, 'error');
    }
  });
  const actions = h('div', { class: 'actions' },
    h('button', { type: 'button', id: 'kv-create-open', class: 'primary', onclick: () => { form.hidden = false; nameInput.focus(); } }, 'Create'));
  if (prefix) {
    actions.append(h('button', {
      type: 'button', class: 'danger', id: 'kv-delete-folder',
      onclick: async () => {
        if (!confirm(`Delete the folder ${prefix} and every key under it?`)) return;
        try {
          await request('DELETE', kvPath(prefix), { params: { recurse: true }, dc: ctx.dc });
          location.hash = kvRoute(ctx.dc, parentOf(prefix));
        } catch (e) {
          message(msg, e.message, 'error');
        }
      },
    }, 'Delete folder'));
  }
  ctx.main.append(crumbs(ctx.dc, prefix), h('div', { class: 'head' }, h('h1', {}, prefix || 'Key/Value'), actions), msg, form, listEl);
  watch(kvPath(prefix), {
    params: { keys: true, separator: '/' },
    dc: ctx.dc,
    signal: ctx.signal,
    onError: ctx.error,
    onOk: ctx.ok,
    onData: (keys) => {
      keys = (keys || []).filter((k) => k !== prefix);
      clear(listEl);
      const frag = document.createDocumentFragment();
      for (const k of keys) {
        const folder = k.endsWith('/');
        const label = k.slice(prefix.length);
        frag.append(h('li', { class: folder ? 'folder' : 'key', dataset: { key: k } },
          h('a', { href: kvRoute(ctx.dc, k) }, h('span', { class: 'icon', 'aria-hidden': 'true' }, folder ? '▸' : '•'), label)));
      }
      if (!keys.length) frag.append(h('li', { class: 'muted' }, 'No keys here.'));
      listEl.append(frag);
    },
  });
}

export function keyPage(ctx, key) {
  const msg = h('p', { class: 'message', role: 'status', hidden: true });
  const view = h('div', { class: 'card kv-view' }, 'Loading…');
  ctx.main.append(crumbs(ctx.dc, key), h('h1', { class: 'kv-key' }, key), msg, view);
  let latest = null; // the entry as last read
  let editing = null; // {modifyIndex, textarea} while the edit form is open

  const show = () => {
    clear(view);
    if (!latest) {
      view.append(h('p', { class: 'muted', id: 'kv-missing' }, 'This key does not exist (any more).'),
        h('a', { href: kvRoute(ctx.dc, parentOf(key)) }, 'Back to the folder'));
      return;
    }
    const v = decodeValue(latest.Value);
    view.append(
      h('pre', { class: 'value', id: 'kv-value', tabindex: '0' }, v.text),
      v.binary ? h('p', { class: 'muted' }, `Binary value (${v.size} bytes), shown in base64.`) : null,
      h('dl', { class: 'facts' },
        h('dt', {}, 'ModifyIndex'), h('dd', { id: 'kv-modify-index' }, String(latest.ModifyIndex)),
        h('dt', {}, 'Flags'), h('dd', {}, String(latest.Flags)),
        latest.Session ? [h('dt', {}, 'Lock session'), h('dd', {}, latest.Session)] : null),
      h('div', { class: 'actions' },
        h('button', { type: 'button', id: 'kv-edit', class: 'primary', disabled: v.binary, onclick: () => edit(v.text) }, 'Edit'),
        h('button', { type: 'button', id: 'kv-delete', class: 'danger', onclick: remove }, 'Delete')));
  };

  const edit = (text) => {
    const textarea = h('textarea', { id: 'kv-edit-value', rows: 10, spellcheck: 'false', 'aria-label': 'Value' });
    textarea.value = text;
    editing = { modifyIndex: latest.ModifyIndex, textarea };
    const form = h('form', { class: 'kv-form', id: 'kv-edit-form' },
      h('p', { class: 'muted' }, `Editing the value at ModifyIndex ${latest.ModifyIndex}; saving fails if it changed meanwhile.`),
      textarea,
      h('div', { class: 'actions' },
        h('button', { type: 'submit', id: 'kv-save', class: 'primary' }, 'Save'),
        h('button', { type: 'button', onclick: () => { editing = null; message(msg, '', ''); show(); } }, 'Cancel')));
    form.addEventListener('submit', save);
    clear(view).append(form);
    textarea.focus();
  };

  async function save(ev) {
    ev.preventDefault();
    const at = editing.modifyIndex;
    try {
      // Check-and-set: stored only if nobody wrote the key since it was opened.
      const r = await request('PUT', kvPath(key), { params: { cas: at }, dc: ctx.dc, body: editing.textarea.value });
      if (r.data === true) {
        editing = null;
        message(msg, 'Saved.', 'ok');
        // The watch brings the new value. It may have come already (a blocking read wakes
        // at the commit, as the PUT answers), while the form was open: then show it now.
        if (!latest || latest.ModifyIndex !== at) show();
      } else {
        message(msg, `Not saved: the key was changed by someone else since you opened it (it was at ModifyIndex ${at}${latest ? `, it is now at ${latest.ModifyIndex}` : ', it has been deleted'}). Your text is still in the form: copy it, cancel to see the current value, and edit again.`, 'error');
      }
    } catch (e) {
      message(msg, e.message, 'error');
    }
  }

  async function remove() {
    if (!latest || !confirm(`Delete the key ${key}?`)) return;
    try {
      const r = await request('DELETE', kvPath(key), { params: { cas: latest.ModifyIndex }, dc: ctx.dc });
      if (r.data === true) location.hash = kvRoute(ctx.dc, parentOf(key));
      else message(msg, 'Not deleted: the key changed since it was shown. Look at the new value first.', 'error');
    } catch (e) {
      message(msg, e.message, 'error');
    }
  }

  watch(kvPath(key), {
    dc: ctx.dc,
    signal: ctx.signal,
    onError: ctx.error,
    onOk: ctx.ok,
    onData: (entries) => {
      latest = entries && entries[0] ? entries[0] : null;
      if (editing) {
        // Never overwrite what the user is typing; say that the stored value moved on.
        if (!latest || latest.ModifyIndex !== editing.modifyIndex) {
          message(msg, 'This key changed since you started editing: saving will fail; cancel to see the new value.', 'error');
        }
        return;
      }
      show();
    },
  });
}
