// nearcache status page: reads this node's JSON endpoints every REFRESH_MS and draws
// them. Plain DOM and SVG, no library; text is always set as text, never as markup.
'use strict';

const REFRESH_MS = 2000;
const SVG_NS = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'style') e.setAttribute('style', v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function fmtBytes(n) {
  if (n == null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + ' ' + u[i];
}

function fmtNum(n, digits) {
  if (n == null || Number.isNaN(n)) return '–';
  return Number(n).toFixed(digits == null ? 1 : digits);
}

function pct(n) { return n == null ? '–' : (100 * n).toFixed(1) + '%'; }

async function getJSON(path) {
  try {
    const r = await fetch(path, { cache: 'no-store' });
    let body = null;
    try { body = await r.json(); } catch (_) { body = null; }
    return { ok: r.ok, status: r.status, body, node: r.headers.get('x-nearcache-node') };
  } catch (e) {
    return { ok: false, status: 0, body: null, error: String(e) };
  }
}

// A line plot of one or more series over time. series: [{name, color, points: [[t, v]]}]
// with v null for gaps. The SVG's data-points says how many points were drawn.
function plot(id, series, opts) {
  const s = $(id);
  const W = 560, H = 180, L = 46, R = 8, T = 8, B = 20;
  s.replaceChildren();
  let tmin = Infinity, tmax = -Infinity, ymax = 0, drawn = 0;
  for (const ser of series) {
    for (const [t, v] of ser.points) {
      tmin = Math.min(tmin, t); tmax = Math.max(tmax, t);
      if (v != null) ymax = Math.max(ymax, v);
    }
  }
  if (opts.ymax != null) ymax = opts.ymax;
  if (!(ymax > 0)) ymax = 1;
  ymax *= opts.ymax != null ? 1 : 1.1;
  if (!Number.isFinite(tmin) || tmax <= tmin) { tmin = Date.now() - 60000; tmax = Date.now(); }
  const x = (t) => L + (W - L - R) * (t - tmin) / (tmax - tmin);
  const y = (v) => T + (H - T - B) * (1 - v / ymax);
  for (let i = 0; i <= 3; i++) {
    const v = ymax * i / 3;
    s.append(svg('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const label = svg('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end' });
    label.textContent = opts.format(v);
    s.append(label);
  }
  const mins = (tmax - tmin) / 60000;
  const tl = svg('text', { x: L, y: H - 4 });
  tl.textContent = '-' + mins.toFixed(mins < 10 ? 1 : 0) + ' min';
  const tr = svg('text', { x: W - R, y: H - 4, 'text-anchor': 'end' });
  tr.textContent = 'now';
  s.append(tl, tr);
  const legend = $(opts.legend);
  legend.replaceChildren();
  for (const ser of series) {
    let run = [];
    const flush = () => {
      if (run.length > 1) s.append(svg('polyline', { points: run.join(' '), stroke: ser.color }));
      else if (run.length === 1) {
        const [px, py] = run[0].split(',');
        s.append(svg('circle', { cx: px, cy: py, r: 2, fill: ser.color }));
      }
      run = [];
    };
    let n = 0;
    for (const [t, v] of ser.points) {
      if (v == null) { flush(); continue; }
      run.push(x(t).toFixed(1) + ',' + y(Math.min(v, ymax)).toFixed(1));
      n++;
    }
    flush();
    drawn = Math.max(drawn, n);
    legend.append(el('span', {}, el('i', { style: 'background:' + ser.color }), ser.name));
  }
  s.dataset.points = String(drawn);
}

function renderHistory(h) {
  if (!h.ok || !h.body) return;
  const pts = h.body.points || [];
  const series = (key) => pts.map((p) => [p.t, p[key]]);
  plot('plot-rps', [{ name: 'requests/s', color: '#2563eb', points: series('req_per_sec') }],
    { legend: 'legend-rps', format: (v) => fmtNum(v, v < 10 ? 1 : 0) });
  plot('plot-hit', [{ name: 'hit ratio', color: '#15803d', points: series('hit_ratio') }],
    { legend: 'legend-hit', ymax: 1, format: (v) => (100 * v).toFixed(0) + '%' });
  plot('plot-latency', [
    { name: 'p50 ms', color: '#2563eb', points: series('p50_ms') },
    { name: 'p90 ms', color: '#d97706', points: series('p90_ms') },
    { name: 'p99 ms', color: '#7c3aed', points: series('p99_ms') },
  ], { legend: 'legend-latency', format: (v) => fmtNum(v, v < 10 ? 2 : 0) + ' ms' });
  plot('plot-uploads', [
    { name: 'pending uploads', color: '#d97706', points: series('pending_uploads') },
    { name: 'origin errors/s', color: '#b91c1c', points: series('origin_errors_per_sec') },
  ], { legend: 'legend-uploads', format: (v) => fmtNum(v, v < 10 ? 1 : 0) });
  if (pts.length > 0) {
    const last = pts[pts.length - 1];
    const minute = pts.slice(-Math.max(1, Math.round(60000 / (h.body.interval_ms || 2000))));
    let hits = 0, n = 0;
    for (const p of minute) if (p.hit_ratio != null) { hits += p.hit_ratio; n++; }
    $('c-rps').textContent = fmtNum(last.req_per_sec, 1);
    $('c-hit').textContent = n ? pct(hits / n) : '–';
    $('c-p99').textContent = last.p99_ms == null ? '–' : fmtNum(last.p99_ms, 2) + ' ms';
    const errs = minute.reduce((a, p) => a + (p.origin_errors_per_sec || 0), 0);
    $('c-origin').replaceChildren(el('span', { class: 'badge ' + (errs > 0 ? 'bad' : 'ok') }, errs > 0 ? 'errors' : 'ok'));
    const mins = (pts.length * (h.body.interval_ms || 2000)) / 60000;
    $('plot-range').textContent = '(' + mins.toFixed(1) + ' min, one point per ' + (h.body.interval_ms / 1000) + ' s)';
    $('origin-rates').textContent = fmtNum(last.origin_req_per_sec, 1) + ' requests/s, ' + fmtNum(last.origin_errors_per_sec, 2) + ' errors/s';
  }
}

function renderHealth(h) {
  const b = h.body || {};
  const status = h.ok ? 'ok' : (b.status || 'unreachable');
  const badge = $('status');
  badge.textContent = status;
  badge.className = 'badge ' + (h.ok ? 'ok' : 'bad');
  if (h.node) $('node').textContent = 'node ' + h.node + ' · up ' + Math.round((b.uptime_seconds || 0) / 60) + ' min · ' + (b.shards || '?') + ' shards';
  b.node_id = h.node;
  $('node-origin').textContent = b.origin || '–';
  $('node-io').textContent = b.io || '–';
  $('c-origin-k').textContent = 'origin: ' + (b.origin || '?');
  return b;
}

function renderStats(s) {
  if (!s.ok || !s.body) return;
  const rows = [];
  const add = (name, r) => {
    const dpct = r.capacity_bytes ? Math.min(100, 100 * r.bytes / r.capacity_bytes) : 0;
    const mpct = r.memory_capacity_bytes ? Math.min(100, 100 * r.memory_bytes / r.memory_capacity_bytes) : 0;
    rows.push(el('tr', { class: 'shard' },
      el('td', {}, name),
      el('td', { class: 'num' }, r.objects),
      el('td', {}, el('div', { class: 'bar' }, el('span', { style: 'width:' + dpct.toFixed(1) + '%' }))),
      el('td', { class: 'muted' }, fmtBytes(r.bytes) + ' / ' + fmtBytes(r.capacity_bytes)),
      el('td', {}, el('div', { class: 'bar mem' }, el('span', { style: 'width:' + mpct.toFixed(1) + '%' }))),
      el('td', { class: 'muted' }, fmtBytes(r.memory_bytes) + ' / ' + fmtBytes(r.memory_capacity_bytes)),
      el('td', { class: 'num' }, r.hits),
      el('td', { class: 'num' }, r.misses),
      el('td', { class: 'num' }, r.evictions),
      el('td', { class: 'num' }, r.pending_uploads)));
  };
  for (const sh of s.body.shards || []) add('shard ' + sh.shard, sh);
  if (s.body.total) add('total', s.body.total);
  replaceRows($('shards'), rows);
  const d = s.body.disk || {};
  $('fs').textContent = 'data dir ' + (d.data_dir || '?') + ': ' + fmtBytes(d.filesystem_available_bytes) +
    ' free of ' + fmtBytes(d.filesystem_total_bytes);
  $('c-pending').textContent = String((s.body.total || {}).pending_uploads ?? '–');
  $('origin-pending').textContent = String((s.body.total || {}).pending_uploads ?? '–');
}

function lagOf(sync, id) {
  const p = sync && sync[id];
  if (!p || !p.peer_last_seq || !p.applied_seq) return null;
  let lag = 0;
  p.peer_last_seq.forEach((l, i) => { lag += Math.max(0, l - (p.applied_seq[i] || 0)); });
  return lag;
}

function renderCluster(c, health) {
  const tbody = $('members');
  if (!c.ok) {
    const alone = c.status === 404;
    $('cluster-summary').textContent = alone
      ? 'This node runs alone (start it with --cluster-listen to form a cluster).'
      : 'cluster view unavailable (' + c.status + ')';
    replaceRows(tbody, [el('tr', { class: 'member', 'data-state': alone ? 'alive' : 'unknown' },
      el('td', {}, (health && health.node_id) || 'this node'), el('td', {}, '–'),
      el('td', {}, el('span', { class: 'badge ok' }, 'alone')), el('td', {}, '–'), el('td', {}, '–'))]);
    return;
  }
  const b = c.body;
  const drain = b.drain || {};
  if (drain.state && drain.state !== 'serving') {
    $('error').textContent = 'draining: ' + drain.state + ', ' + (drain.handed_over || 0) + ' of ' +
      (drain.to_hand_over || 0) + ' keys handed over' + (drain.error ? ' (' + drain.error + ')' : '');
  }
  $('node').textContent = 'node ' + b.node_id + ' · cluster ' + b.cluster + ' · ' + b.addr;
  const states = {};
  for (const m of b.members) states[m.state] = (states[m.state] || 0) + 1;
  $('cluster-summary').textContent = b.members.length + ' members (' +
    Object.entries(states).map(([k, v]) => v + ' ' + k).join(', ') + '); replication factor ' +
    b.replication_factor + ', write quorum ' + b.write_quorum + ', epoch ' + b.epoch;
  replaceRows(tbody, b.members.map((m) => {
    const lag = m.is_self ? null : lagOf(b.sync, m.id);
    const url = (b.public_urls || {})[m.id];
    const name = m.id + (m.is_self ? ' (this node)' : '');
    // Only http(s) URLs become links (the node checks this too).
    const link = url && /^https?:\/\//.test(url) && !m.is_self
      ? el('a', { href: url + '/ui', title: 'status page of ' + m.id }, name) : name;
    return el('tr', { class: 'member', 'data-state': m.state, 'data-id': m.id },
      el('td', {}, link),
      el('td', {}, m.addr),
      el('td', {}, el('span', { class: 'badge ' + m.state }, m.state)),
      el('td', { class: 'num' }, m.generation),
      el('td', { class: 'num' }, m.is_self ? '–' : (lag == null ? '?' : lag)));
  }));
}

function renderJobs(j) {
  const tbody = $('jobs');
  if (!j.ok) {
    $('jobs-note').textContent = j.status === 404
      ? 'This node has no jobs API (an older version).'
      : 'jobs unavailable (' + j.status + ')';
    replaceRows(tbody, []);
    return;
  }
  const jobs = j.body.jobs || [];
  const running = jobs.filter((x) => x.finished_unix_ms == null).length;
  $('jobs-note').textContent = jobs.length ? running + ' running, ' + (jobs.length - running) + ' finished' : 'no jobs';
  replaceRows(tbody, jobs.map((x) => {
    const done = (x.fetched || 0) + (x.skipped || 0) + (x.deleted || 0) + (x.errors || 0);
    const total = Math.max(x.listed || 0, done);
    const p = total ? 100 * done / total : (x.finished_unix_ms != null ? 100 : 0);
    return el('tr', { class: 'job' },
      el('td', {}, x.id), el('td', {}, x.kind || ''),
      el('td', {}, (x.bucket || '') + '/' + (x.prefix || '')),
      el('td', {}, el('span', { class: 'badge ' + (x.error ? 'bad' : x.finished_unix_ms != null ? 'ok' : 'warn') }, x.state || '?')),
      el('td', {}, el('div', { class: 'bar' }, el('span', { style: 'width:' + p.toFixed(1) + '%' })),
        el('span', { class: 'muted' }, done + ' / ' + total + (x.eta_secs != null ? ' · eta ' + Math.round(x.eta_secs) + ' s' : ''))),
      el('td', { class: 'num' }, x.errors || 0));
  }));
}

function originTable() {
  const rows = [
    ['origin', 'node-origin'], ['disk I/O', 'node-io'], ['requests and errors', 'origin-rates'],
    ['pending uploads', 'origin-pending'],
  ];
  replaceRows($('origin'), rows.map(([k, id]) => el('tr', {}, el('th', {}, k), el('td', { id }, '–'))));
}

async function showPlacement(ev) {
  ev.preventDefault();
  const key = $('placement-key').value.trim();
  if (!key) return;
  const r = await getJSON('/api/v1/cluster?key=' + encodeURIComponent(key));
  const out = $('placement');
  if (!r.ok) {
    out.textContent = r.status === 404 ? 'This node runs alone: it owns every key.' : 'error ' + r.status;
    return;
  }
  const k = r.body.key;
  out.replaceChildren(el('div', {}, 'owners: ', el('b', {}, k.owners.join(', '))),
    el('div', { class: 'muted' }, 'ranking: ' + k.ranking.join(' > ')));
}

let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const [health, stats, cluster, history, jobs] = await Promise.all([
      getJSON('/healthz'), getJSON('/api/v1/stats'), getJSON('/api/v1/cluster'),
      getJSON('/api/v1/history'), getJSON('/api/v1/jobs'),
    ]);
    $('error').textContent = health.status === 0 ? 'node unreachable: ' + (health.error || '') : '';
    const h = renderHealth(health);
    renderStats(stats);
    renderCluster(cluster, h);
    renderHistory(history);
    renderJobs(jobs);
    $('updated').textContent = new Date().toLocaleTimeString();
    document.body.dataset.loaded = 'true';
  } finally {
    refreshing = false;
  }
}

originTable();
$('placement-form').addEventListener('submit', showPlacement);
refresh();
setInterval(refresh, REFRESH_MS);
