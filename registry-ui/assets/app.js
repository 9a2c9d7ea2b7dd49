// The app: hash routes (`#/dc/<dc>/services[/<name>]`, `.../nodes[/<node>]`,
// `.../kv/<key or folder/>`, `#/settings`), the datacenter switcher and the error banner.
// Each page gets an AbortSignal that fires when the user navigates away, which ends its
// blocking queries.
import { request, setLocalDc, getLocalDc, token, setToken } from './api.js';
import { h, clear, route } from './dom.js';
import { servicesPage, servicePage, nodesPage, nodePage } from './catalog.js';
import { folderPage, keyPage, kvRoute } from './kv.js';

const main = document.getElementById('main');
const banner = document.getElementById('banner');
const dcSelect = document.getElementById('dc');
let current = null; // the AbortController of the page on screen

function showError(e) {
  clear(banner).append(e.message || String(e));
  if (e.status === 403) {
    banner.append(' ', h('a', { href: '#/settings' }, 'Set a token'));
  } else {
    banner.append(' (retrying)');
  }
  banner.hidden = false;
}

function clearError() {
  banner.hidden = true;
  clear(banner);
}

/** The route in the hash: {dc, section, rest} (rest: the decoded remainder, '' when none). */
function parse() {
  const raw = location.hash.replace(/^#\/?/, '');
  if (raw === 'settings') return { section: 'settings' };
  const m = raw.match(/^dc\/([^/]+)\/([a-z]+)\/?(.*)$/);
  if (!m) return null;
  const decode = (s) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  return { dc: decode(m[1]), section: m[2], rest: m[3].split('/').map(decode).join('/') };
}

function setNav(dc, section) {
  document.getElementById('brand').href = route(dc, 'services');
  const links = { services: route(dc, 'services'), nodes: route(dc, 'nodes'), kv: kvRoute(dc, '') };
  for (const [id, href] of Object.entries(links)) {
    const a = document.getElementById(`nav-${id}`);
    a.href = href;
    if (id === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const s = document.getElementById('nav-settings');
  if (section === 'settings') s.setAttribute('aria-current', 'page');
  else s.removeAttribute('aria-current');
  if (dc && [...dcSelect.options].every((o) => o.value !== dc)) {
    dcSelect.append(h('option', { value: dc }, dc));
  }
  if (dc) dcSelect.value = dc;
}

function settingsPage(ctx) {
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'off', spellcheck: 'false' });
  input.value = token();
  const msg = h('p', { class: 'message', role: 'status', hidden: true });
  const form = h('form', { class: 'card kv-form', id: 'token-form' },
    h('label', { for: 'token' }, 'ACL token (sent as the X-Consul-Token header; kept in this browser only)'),
    input,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'primary', id: 'token-save' }, 'Save'),
      h('button', { type: 'button', id: 'token-clear', onclick: () => { input.value = ''; setToken(''); say('Token removed.'); } }, 'Remove')));
  const say = (text) => {
    clear(msg).append(text);
    msg.className = 'message ok';
    msg.hidden = false;
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    setToken(input.value.trim());
    clearError();
    say(input.value.trim() ? 'Token saved.' : 'Token removed.');
  });
  ctx.main.append(h('h1', {}, 'Token'), msg, form);
}

function render() {
  current?.abort();
  current = new AbortController();
  clearError();
  const r = parse();
  const dc = r?.dc || getLocalDc();
  if (!r) {
    location.replace(route(dc, 'services'));
    return;
  }
  setNav(r.dc || getLocalDc(), r.section);
  clear(main);
  const ctx = { dc, main, signal: current.signal, error: showError, ok: clearError };
  switch (r.section) {
    case 'services':
      if (r.rest) servicePage(ctx, r.rest);
      else servicesPage(ctx);
      break;
    case 'nodes':
      if (r.rest) nodePage(ctx, r.rest);
      else nodesPage(ctx);
      break;
    case 'kv':
      if (!r.rest || r.rest.endsWith('/')) folderPage(ctx, r.rest);
      else keyPage(ctx, r.rest);
      break;
    case 'settings':
      settingsPage(ctx);
      break;
    default:
      main.append(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: route(dc, 'services') }, 'Services')));
  }
  document.title = `${r.section === 'kv' ? 'Key/Value' : r.section[0].toUpperCase() + r.section.slice(1)} — Registry`;
}

async function start() {
  // The local datacenter comes first (then the others by round-trip time). Every route
  // names a datacenter, so nothing renders until this answers (retried with backoff).
  let dcs = [];
  for (let wait = 1000; !dcs.length; wait = Math.min(wait * 2, 30000)) {
    try {
      dcs = (await request('GET', '/v1/catalog/datacenters')).data || [];
      clearError();
    } catch (e) {
      showError(e);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
  setLocalDc(dcs[0]);
  for (const dc of dcs) dcSelect.append(h('option', { value: dc }, dc));
  dcSelect.addEventListener('change', () => {
    const r = parse();
    const section = r && r.section !== 'settings' ? r.section : 'services';
    location.hash = section === 'kv' ? kvRoute(dcSelect.value, '') : route(dcSelect.value, section);
  });
  window.addEventListener('hashchange', () => {
    render();
    // Keyboard and screen-reader users land on the new page's content.
    main.focus({ preventScroll: true });
  });
  render();
  document.body.dataset.ready = 'true';
}

start();
