// The catalog pages: services, one service's instances, nodes, one node.
import { watch } from './api.js';
import { h, clear, fillRows, table, statusBadge, healthCounts, worst, route, metaList, tagList } from './dom.js';

/** A text filter over rows: each row's `data-search` (lower-case) must contain the text. */
function filterBox(label, tableEl) {
  const input = h('input', { type: 'search', id: 'filter', placeholder: label, 'aria-label': label, autocomplete: 'off' });
  const matches = (row) => {
    const q = input.value.trim().toLowerCase();
    return !q || row.dataset.search.includes(q);
  };
  let timer = 0;
  input.addEventListener('input', () => {
    clearTimeout(timer);
    // Debounced: typing a word re-filters once, not per keystroke.
    timer = setTimeout(() => {
      for (const row of tableEl.tBodies[0]?.rows || []) row.hidden = !matches(row);
    }, 80);
  });
  return { input, matches };
}

function checksTable(checks, withService) {
  const headers = ['Check', 'Status', withService ? 'Service' : null, 'Output'].filter(Boolean);
  const t = table('Health checks', headers, 'list checks');
  const body = t.tBodies[0];
  for (const c of checks) {
    body.append(h('tr', { dataset: { check: c.CheckID, key: c.CheckID } },
      h('td', {}, h('span', { class: 'check-name' }, c.Name || c.CheckID), h('div', { class: 'muted small' }, c.CheckID)),
      h('td', { dataset: { checkStatus: c.Status } }, statusBadge(c.Status)),
      withService && h('td', {}, c.ServiceName || h('span', { class: 'muted' }, 'node')),
      h('td', {}, c.Output ? h('pre', { class: 'output' }, c.Output) : h('span', { class: 'muted' }, '—'))));
  }
  if (!checks.length) body.append(h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, 'No checks.')));
  return t;
}

export function servicesPage(ctx) {
  const t = table('Services', ['Service', 'Health', 'Instances', 'Tags'], 'list services');
  const filter = filterBox('Filter services by name or tag', t);
  const count = h('span', { class: 'count', id: 'service-count' });
  ctx.main.append(h('div', { class: 'head' }, h('h1', {}, 'Services ', count), filter.input), h('div', { class: 'scroll' }, t));
  const row = (s) => h('tr', { dataset: { service: s.Name, key: s.Name, search: [s.Name, ...(s.Tags || [])].join(' ').toLowerCase() } },
    h('th', { scope: 'row' }, h('a', { href: route(ctx.dc, 'services', s.Name) }, s.Name)),
    h('td', { class: 'health-cell' }, healthCounts(s.ChecksPassing, s.ChecksWarning, s.ChecksCritical)),
    h('td', { class: 'instances' }, String(s.InstanceCount)),
    h('td', { class: 'tags-cell' }, tagList(s.Tags)));
  watch('/v1/internal/ui/services', {
    dc: ctx.dc,
    signal: ctx.signal,
    onError: ctx.error,
    onOk: ctx.ok,
    onData: (list) => {
      list = list || [];
      count.textContent = `(${list.length})`;
      fillRows(t, list, row, filter.matches);
    },
  });
}

export function servicePage(ctx, name) {
  const summary = h('p', { class: 'summary', id: 'service-summary' }, 'Loading…');
  const list = h('div', { class: 'instances-list' });
  ctx.main.append(
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: route(ctx.dc, 'services') }, 'Services'), ' / '),
    h('h1', {}, name), summary, list);
  watch(`/v1/health/service/${encodeURIComponent(name)}`, {
    dc: ctx.dc,
    signal: ctx.signal,
    onError: ctx.error,
    onOk: ctx.ok,
    onData: (entries) => {
      entries = entries || [];
      const statuses = entries.flatMap((e) => e.Checks.map((c) => c.Status));
      clear(summary).append(`${entries.length} instance${entries.length === 1 ? '' : 's'} `,
        entries.length ? statusBadge(worst(statuses)) : h('span', { class: 'muted' }, '(not registered in this datacenter)'));
      clear(list);
      const frag = document.createDocumentFragment();
      for (const e of entries) {
        const svc = e.Service;
        const addr = `${svc.Address || e.Node.Address}:${svc.Port}`;
        frag.append(h('section', { class: 'card instance', dataset: { instance: `${e.Node.Node}/${svc.ID}` } },
          h('h2', {}, svc.ID, ' ', statusBadge(worst(e.Checks.map((c) => c.Status)))),
          h('dl', { class: 'facts' },
            h('dt', {}, 'Node'), h('dd', {}, h('a', { href: route(ctx.dc, 'nodes', e.Node.Node) }, e.Node.Node)),
            h('dt', {}, 'Address'), h('dd', { class: 'address' }, addr),
            h('dt', {}, 'Tags'), h('dd', {}, tagList(svc.Tags)),
            h('dt', {}, 'Meta'), h('dd', {}, metaList(svc.Meta))),
          h('div', { class: 'scroll' }, checksTable(e.Checks, false))));
      }
      list.append(frag);
    },
  });
}

export function nodesPage(ctx) {
  const t = table('Nodes', ['Node', 'Health', 'Address', 'Services'], 'list nodes');
  const filter = filterBox('Filter nodes by name or address', t);
  const count = h('span', { class: 'count' });
  ctx.main.append(h('div', { class: 'head' }, h('h1', {}, 'Nodes ', count), filter.input), h('div', { class: 'scroll' }, t));
  const row = (n) => {
    const by = (s) => n.Checks.filter((c) => c.Status === s).length;
    return h('tr', { dataset: { node: n.Node, key: n.Node, search: `${n.Node} ${n.Address}`.toLowerCase() } },
      h('th', { scope: 'row' }, h('a', { href: route(ctx.dc, 'nodes', n.Node) }, n.Node)),
      h('td', {}, healthCounts(by('passing'), by('warning'), by('critical'))),
      h('td', {}, n.Address),
      h('td', { class: 'service-count' }, String(n.Services.length)));
  };
  watch('/v1/internal/ui/nodes', {
    dc: ctx.dc,
    signal: ctx.signal,
    onError: ctx.error,
    onOk: ctx.ok,
    onData: (list) => {
      list = list || [];
      count.textContent = `(${list.length})`;
      fillRows(t, list, row, filter.matches);
    },
  });
}

export function nodePage(ctx, node) {
  const facts = h('div', { class: 'node-facts' }, 'Loading…');
  const checks = h('div', { class: 'scroll', id: 'node-checks' });
  const services = h('div', { class: 'scroll', id: 'node-services' });
  ctx.main.append(
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: route(ctx.dc, 'nodes') }, 'Nodes'), ' / '),
    h('h1', {}, node), facts,
    h('h2', {}, 'Health checks'), checks,
    h('h2', {}, 'Services'), services);
  const common = { dc: ctx.dc, signal: ctx.signal, onError: ctx.error, onOk: ctx.ok };
  watch(`/v1/health/node/${encodeURIComponent(node)}`, {
    ...common,
    onData: (list) => clear(checks).append(checksTable(list || [], true)),
  });
  watch(`/v1/catalog/node-services/${encodeURIComponent(node)}`, {
    ...common,
    onData: (found) => {
      if (!found) {
        clear(facts).append(h('p', { class: 'muted' }, 'This node is not in the catalog.'));
        clear(services);
        return;
      }
      clear(facts).append(h('dl', { class: 'facts' },
        h('dt', {}, 'Address'), h('dd', {}, found.Node.Address),
        h('dt', {}, 'Datacenter'), h('dd', {}, found.Node.Datacenter),
        h('dt', {}, 'Meta'), h('dd', {}, metaList(found.Node.Meta))));
      const t = table('Services on this node', ['Service', 'ID', 'Address', 'Tags'], 'list');
      for (const s of found.Services) {
        t.tBodies[0].append(h('tr', { dataset: { key: s.ID } },
          h('th', { scope: 'row' }, h('a', { href: route(ctx.dc, 'services', s.Service) }, s.Service)),
          h('td', {}, s.ID),
          h('td', {}, `${s.Address || found.Node.Address}:${s.Port}`),
          h('td', {}, tagList(s.Tags))));
      }
      if (!found.Services.length) t.tBodies[0].append(h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No services.')));
      clear(services).append(t);
    },
  });
}
