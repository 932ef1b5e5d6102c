'use strict';
// The chatfleet console: plain JavaScript against the public API, no build
// step. An in-progress answer is kept in sessionStorage (its text so far and
// the last event id), so that a reload resumes the stream exactly where it was.

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
const state = { key: store.getItem('cf.key') || '', admin: store.getItem('cf.admin') || '' };

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h['Authorization'] = 'Bearer ' + state.key;
  return h;
}

// api calls the API with the key: its answer's JSON, or its text when text
// is set (a file's content).
async function api(method, path, body, text) {
  const res = await fetch(path, {
    method,
    headers: authHeaders(body ? { 'Content-Type': 'application/json' } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  if (res.status === 401) {
    $('keyform').hidden = false;
    throw new Error('this fleet needs an API key');
  }
  if (text && res.ok) return res.text();
  const data = res.status === 204 ? null : await res.json();
  if (!res.ok) throw new Error((data && data.error && data.error.message) || res.statusText);
  return data;
}

// A stream URL a page can open: EventSource cannot send an Authorization
// header, so with keys on the page asks for a short-lived stream token.
async function streamURL(jobID, after) {
  let url = '/api/v1/chat/jobs/' + encodeURIComponent(jobID) + '/stream';
  if (state.key) url = (await api('POST', url + '-token')).stream_url;
  if (after > 0) url += (url.includes('?') ? '&' : '?') + 'last_event_id=' + after;
  return url;
}

// ---- tabs: every view has a URL (#/chat, #/queue, #/jobs, #/jobs/<id>,
// #/batches, #/batches/<id> (batches.js), #/usage), so views can be linked
// and the back button works ----
document.querySelectorAll('nav button').forEach((b) => b.addEventListener('click', () => { location.hash = '#/' + b.dataset.tab; }));
function showTab(name) {
  document.querySelectorAll('nav button').forEach((b) => b.classList.toggle('active', b.dataset.tab === name));
  document.querySelectorAll('.tab').forEach((s) => { s.hidden = s.id !== name; });
  if (name === 'queue') refreshQueue();
  if (name === 'usage') showUsage();
}
function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  const tab = ['chat', 'queue', 'jobs', 'batches', 'usage'].includes(parts[0]) ? parts[0] : 'chat';
  showTab(tab);
  if (tab === 'jobs' && parts[1]) showJob(decodeURIComponent(parts[1]));
  else if (tab === 'jobs' && !$('joblist').rows.length) listJobs(false);
  if (tab === 'batches') showBatches(...parts.slice(1, 3).map(decodeURIComponent));
}
window.addEventListener('hashchange', route);

$('keyform').addEventListener('submit', (ev) => {
  ev.preventDefault();
  state.key = $('apikey').value.trim();
  store.setItem('cf.key', state.key);
  $('keyform').hidden = true;
  loadHistory();
  loadModels();
  route(); // the view asked for, now with the key
});

// ---- chat ----
function newSessionID() {
  const b = new Uint8Array(6);
  crypto.getRandomValues(b);
  return 'console-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
$('session').value = store.getItem('cf.session') || newSessionID();
store.setItem('cf.session', $('session').value);
$('session').addEventListener('change', () => { store.setItem('cf.session', $('session').value.trim()); loadHistory(); });
$('newsession').addEventListener('click', () => {
  $('session').value = newSessionID();
  store.setItem('cf.session', $('session').value);
  loadHistory();
});

// The models this fleet serves (/v1/models), offered as the job's model;
// "default" sends none and gets the fleet's default model.
async function loadModels() {
  try {
    const list = await api('GET', '/v1/models');
    const sel = $('model');
    const want = store.getItem('cf.model') || '';
    sel.length = 1;
    list.data.forEach((m) => { if (m.id) sel.add(new Option(m.id, m.id)); });
    sel.value = [...sel.options].some((o) => o.value === want) ? want : '';
  } catch (e) {
    $('chatstatus').textContent = e.message;
  }
}
$('model').addEventListener('change', () => store.setItem('cf.model', $('model').value));

function bubble(role, text, jobID) {
  const el = document.createElement('div');
  el.className = 'msg ' + role;
  if (jobID) el.dataset.job = jobID;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  el.appendChild(body);
  $('messages').appendChild(el);
  el.scrollIntoView({ block: 'end' });
  return el;
}

// showCalls shows an answer's tool calls, name and arguments, one a line.
function showCalls(el, calls) {
  let box = el.querySelector('.calls');
  if (!box) {
    box = document.createElement('div');
    box.className = 'calls';
    el.insertBefore(box, el.querySelector('.note'));
  }
  box.textContent = '';
  (calls || []).forEach((c) => {
    if (!c) return;
    const line = document.createElement('code');
    line.className = 'call';
    line.textContent = c.function.name + '(' + c.function.arguments + ')';
    box.appendChild(line);
  });
}

function note(el, text, st) {
  el.dataset.state = st;
  let n = el.querySelector('.note');
  if (!n) { n = document.createElement('span'); n.className = 'note'; el.appendChild(n); }
  n.textContent = text;
}

async function loadHistory() {
  $('messages').textContent = '';
  try {
    const h = await api('GET', '/api/v1/sessions/' + encodeURIComponent($('session').value) + '/messages');
    h.messages.forEach((m) => {
      const text = m.role === 'tool' ? 'tool result for ' + m.tool_call_id + ': ' + m.content : m.content;
      const el = bubble(m.role, text, m.job_id);
      if (m.tool_calls) showCalls(el, m.tool_calls);
    });
  } catch (e) {
    $('chatstatus').textContent = e.message;
  }
  const cur = current();
  if (cur && cur.session === $('session').value) {
    bubble('user', cur.message);
    follow(cur);
  }
}

function current() {
  try { return JSON.parse(store.getItem('cf.current') || 'null'); } catch (e) { return null; }
}

// follow streams a job into its bubble, from the event after cur.seq.
async function follow(cur) {
  const el = bubble('assistant', cur.text, cur.job);
  cur.calls = cur.calls || [];
  if (cur.calls.length) showCalls(el, cur.calls);
  note(el, cur.text || cur.calls.length ? 'resuming…' : 'waiting for a worker…', 'streaming');
  $('cancel').disabled = false;
  $('cancel').onclick = () => api('POST', '/api/v1/chat/jobs/' + cur.job + '/cancel').catch((e) => { $('chatstatus').textContent = e.message; });
  let ended = false;
  const save = (seq) => { cur.seq = seq; store.setItem('cf.current', JSON.stringify(cur)); };
  const text = el.querySelector('.text');
  const end = (st, msg) => {
    ended = true;
    note(el, msg, st);
    store.removeItem('cf.current');
    $('cancel').disabled = true;
    $('chatstatus').textContent = '';
    window.cfStream.close(); // the answer is complete (the server would answer a reconnect with 204)
  };
  // connect opens the stream after the last event seen. EventSource
  // reconnects by itself after a dropped connection; one the server refused
  // (a stream token that expired) is opened again with a new token.
  const connect = async () => {
    if (window.cfStream) window.cfStream.close(); // one answer streams at a time
    const es = new EventSource(await streamURL(cur.job, cur.seq));
    window.cfStream = es; // for tests and the curious
    es.addEventListener('token', (ev) => {
      const d = JSON.parse(ev.data);
      cur.text += d.delta;
      text.textContent = cur.text;
      note(el, '', 'streaming');
      save(d.seq);
    });
    es.addEventListener('tool_call', (ev) => {
      const d = JSON.parse(ev.data);
      const c = cur.calls[d.index] || (cur.calls[d.index] = { function: { name: '', arguments: '' } });
      if (d.name) c.function.name = d.name;
      c.function.arguments += d.arguments;
      showCalls(el, cur.calls);
      note(el, '', 'streaming');
      save(d.seq);
    });
    es.addEventListener('retry', (ev) => {
      const d = JSON.parse(ev.data);
      cur.text = '';
      cur.calls = [];
      text.textContent = '';
      showCalls(el, []);
      note(el, 'the provider failed mid-answer; retrying (attempt ' + d.attempt + ')…', 'retrying');
      save(d.seq);
    });
    es.addEventListener('done', (ev) => {
      const d = JSON.parse(ev.data);
      el.dataset.streamed = cur.text; // what the tokens added up to, for checks
      text.textContent = d.result.content;
      showCalls(el, d.result.tool_calls);
      const calls = (d.result.tool_calls || []).length;
      end(d.result.degraded ? 'degraded' : 'done',
        d.result.degraded ? 'degraded reply: every provider is unavailable'
          : d.result.provider + ' · ' + d.usage.completion_tokens + ' tokens' + (calls ? ' · asks for ' + calls + ' tool call' + (calls > 1 ? 's' : '') : ''));
    });
    es.addEventListener('error', (ev) => {
      if (!ev.data) {
        if (es.readyState === EventSource.CLOSED && !ended && window.cfStream === es) setTimeout(connect, 1000);
        return;
      }
      const d = JSON.parse(ev.data);
      end('failed', 'failed: ' + d.error.message);
    });
    es.addEventListener('canceled', () => end('canceled', 'canceled'));
  };
  await connect();
}

async function send() {
  const message = $('input').value.trim();
  if (!message) return;
  $('send').disabled = true;
  try {
    const job = { session_id: $('session').value, message };
    if ($('model').value) job.model = $('model').value;
    const sub = await api('POST', '/api/v1/chat/jobs', job);
    $('input').value = '';
    bubble('user', message);
    const cur = { job: sub.job_id, session: sub.session_id, message, text: '', seq: 0 };
    store.setItem('cf.current', JSON.stringify(cur));
    follow(cur);
  } catch (e) {
    $('chatstatus').textContent = e.message;
  } finally {
    $('send').disabled = false;
  }
}
$('compose').addEventListener('submit', (ev) => { ev.preventDefault(); send(); });
$('input').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); send(); }
});

// ---- queue ----
let queueTimer = null;
async function refreshQueue() {
  clearTimeout(queueTimer);
  if ($('queue').hidden) return;
  try {
    const [q, d] = await Promise.all([api('GET', '/health/queue/status'), api('GET', '/health/detailed')]);
    $('queuestatus').textContent = q.status + ': backlog ' + q.backlog + ' (' + q.runnable + ' runnable) of threshold ' + q.threshold +
      (q.throughput_jobs_per_second !== undefined ? ' · ' + q.throughput_jobs_per_second + ' jobs/s' : '');
    $('queuestatus').className = 'status' + (q.status === 'warning' ? ' warning' : '');
    $('advice').textContent = q.advice;
    const sched = q.scheduler;
    table($('schedlanes'), ['priority', 'waiting', 'runnable', 'oldest (s)'],
      sched.lanes.map((x) => [x.priority, x.queued, x.runnable, x.oldest_age_seconds.toFixed(1)]));
    table($('schedmodels'), ['model', 'waiting', 'oldest (s)', 'at quota until'],
      sched.models.map((x) => [x.model, x.queued, x.oldest_age_seconds.toFixed(1), x.blocked_until ? new Date(x.blocked_until).toLocaleTimeString() : '']));
    table($('schedtenants'), ['tenant', 'waiting'], sched.tenants.map((x) => [x.tenant, x.queued]));
    table($('queues'), ['queue', 'pending', 'scheduled', 'retry', 'active', 'archived', 'oldest (s)'],
      q.queues.map((x) => [x.name, x.pending, x.scheduled, x.retry, x.active, x.archived, x.latency_seconds.toFixed(1)]));
    $('workers').textContent = q.workers.live + ' live, ' + q.workers.busy + ' of ' + q.workers.concurrency + ' slots busy';
    showDeployments(d);
    await refreshHistory();
  } catch (e) {
    $('queuestatus').textContent = e.message;
  }
  queueTimer = setTimeout(refreshQueue, 2000);
}

// showDeployments lists each deployment's breaker and quota use, fleet-wide
// (an API without the deployments list shows its breakers alone).
function showDeployments(d) {
  if (!d.deployments) {
    table($('deployments'), ['deployment', 'breaker'], Object.entries(d.breakers || {}));
    return;
  }
  const of = (n, limit) => (limit ? n + ' of ' + limit : String(n));
  table($('deployments'), ['deployment', 'model', 'provider', 'breaker', 'in flight', 'requests in window', 'rate (rpm)', 'at limit'],
    d.deployments.map((x) => [x.id, x.model, x.provider, x.breaker,
      x.limited ? of(x.in_flight, x.concurrency_limit) : 'not limited',
      x.window ? x.window.requests + ' of ' + x.window.allowed + ' per ' + (x.window.ms / 1000).toFixed(2) + ' s' : '—',
      x.limits.rpm ? x.rpm_effective + ' of ' + x.limits.rpm : '—',
      x.paused_ms > 0 ? 'paused ' + (x.paused_ms / 1000).toFixed(1) + ' s' : (x.at_limit || '')]));
  // The breaker's state styles its row (an open one stands out).
  $('deployments').querySelectorAll('tr').forEach((tr, i) => {
    if (i > 0) tr.dataset.breaker = d.deployments[i - 1].breaker;
  });
}

function table(t, head, rows) {
  t.textContent = '';
  const tr = t.insertRow();
  head.forEach((h) => { const th = document.createElement('th'); th.textContent = h; tr.appendChild(th); });
  rows.forEach((r) => {
    const row = t.insertRow();
    r.forEach((c) => { const td = row.insertCell(); if (c instanceof Node) td.appendChild(c); else td.textContent = c; });
  });
}

// ---- jobs ----
// The tenant's recent jobs, newest first, a page at a time.
let listCursor = null;
async function listJobs(more) {
  const q = new URLSearchParams({ limit: '20' });
  if ($('listsession').value.trim()) q.set('session_id', $('listsession').value.trim());
  if ($('liststatus').value) q.set('status', $('liststatus').value);
  if (more && listCursor) q.set('cursor', listCursor);
  try {
    const page = await api('GET', '/api/v1/chat/jobs?' + q);
    const rows = page.data.map((j) => {
      const a = document.createElement('a');
      a.href = '#/jobs/' + encodeURIComponent(j.job_id);
      a.textContent = j.job_id;
      return [a, j.session_id, j.status, j.created_at, j.usage ? j.usage.prompt_tokens + j.usage.completion_tokens : ''];
    });
    if (!more) table($('joblist'), ['job', 'session', 'status', 'created', 'tokens'], []);
    rows.forEach((r) => {
      const row = $('joblist').insertRow();
      r.forEach((c) => { const td = row.insertCell(); if (c instanceof Node) td.appendChild(c); else td.textContent = c; });
    });
    listCursor = page.next_cursor;
    $('listmore').hidden = !page.has_more;
    $('liststatusline').textContent = ($('joblist').rows.length - 1) + ' jobs shown';
  } catch (e) {
    $('liststatusline').textContent = e.message;
  }
}
$('listform').addEventListener('submit', (ev) => { ev.preventDefault(); listJobs(false); });
$('listmore').addEventListener('click', () => listJobs(true));

$('jobform').addEventListener('submit', (ev) => {
  ev.preventDefault();
  location.hash = '#/jobs/' + encodeURIComponent($('jobid').value.trim());
});

let jobStream = null;
async function showJob(id) {
  $('jobid').value = id;
  $('jobevents').textContent = '';
  if (jobStream) jobStream.close();
  try {
    const j = await api('GET', '/api/v1/chat/jobs/' + encodeURIComponent(id));
    $('jobview').textContent = JSON.stringify(j, null, 2);
    const es = new EventSource(await streamURL(id, 0));
    jobStream = es;
    const add = (ev) => {
      const li = document.createElement('li');
      li.textContent = ev.type + ' ' + ev.data;
      $('jobevents').appendChild(li);
      if (!['token', 'tool_call', 'retry'].includes(ev.type)) es.close();
    };
    ['token', 'tool_call', 'retry', 'done', 'canceled'].forEach((t) => es.addEventListener(t, add));
    es.addEventListener('error', (ev) => { if (ev.data) add(ev); else es.close(); });
  } catch (e) {
    $('jobview').textContent = e.message;
  }
}

$('adminform').addEventListener('submit', (ev) => {
  ev.preventDefault();
  state.admin = $('adminkey').value.trim();
  store.setItem('cf.admin', state.admin);
  listArchived();
});

async function admin(method, path) {
  const res = await fetch(path, { method, headers: { Authorization: 'Bearer ' + state.admin } });
  const data = await res.json();
  if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
  return data;
}

async function listArchived() {
  try {
    const data = await admin('GET', '/admin/api/archived');
    $('adminstatus').textContent = data.jobs.length + ' archived jobs';
    table($('archived'), ['job', 'queue', 'last error', 'failed at', ''], data.jobs.map((j) => {
      const b = document.createElement('button');
      b.textContent = 'Re-run';
      b.addEventListener('click', async () => {
        try { await admin('POST', '/admin/api/jobs/' + encodeURIComponent(j.job_id) + '/rerun'); listArchived(); } catch (e) { $('adminstatus').textContent = e.message; }
      });
      return [j.job_id, j.queue, j.last_error, j.last_failed_at, b];
    }));
  } catch (e) {
    $('adminstatus').textContent = e.message;
  }
  listArchivedWebhooks();
}

// Deliveries that failed for their whole retry period, or were refused.
async function listArchivedWebhooks() {
  try {
    const data = await admin('GET', '/admin/api/webhooks/archived');
    $('webhookstatus').textContent = data.deliveries.length + ' archived webhook deliveries';
    table($('archivedwebhooks'), ['event', 'job or batch', 'url', 'attempts', 'last error', 'failed at', ''], data.deliveries.map((d) => {
      const b = document.createElement('button');
      b.textContent = 'Re-deliver';
      b.addEventListener('click', async () => {
        try { await admin('POST', '/admin/api/webhooks/' + encodeURIComponent(d.id) + '/redeliver'); listArchivedWebhooks(); } catch (e) { $('webhookstatus').textContent = e.message; }
      });
      return [d.type, d.job_id || d.batch_id, d.url, d.attempts, d.last_error, d.last_failed_at, b];
    }));
  } catch (e) {
    $('webhookstatus').textContent = e.message;
  }
}

// ---- usage: tokens per day by model (a stacked bar chart drawn as SVG,
// nothing fetched from elsewhere), and the rows with their cost ----
function isoDay(d) { return d.toISOString().slice(0, 10); }
async function showUsage() {
  const now = new Date();
  if (!$('usagefrom').value) $('usagefrom').value = isoDay(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)));
  if (!$('usageto').value) $('usageto').value = isoDay(now);
  try {
    const range = { from: $('usagefrom').value, to: $('usageto').value };
    const [u, byModel] = await Promise.all([api('GET', '/api/v1/usage?' + new URLSearchParams(range)),
      api('GET', '/api/v1/usage?' + new URLSearchParams(Object.assign({ group_by: 'model' }, range)))]);
    const cost = (v) => (v === null || v === undefined ? '—' : '$' + v.toFixed(4));
    let budget = '';
    if (u.budget) {
      const v = (x) => (u.budget.unit === 'usd' ? '$' + x.toFixed(2) : String(x));
      budget = '; budget ' + u.budget.budget + ': ' + v(u.budget.spent) + ' spent, resets ' + u.budget.reset_at;
    }
    $('usagestatus').textContent = u.tenant + ': ' + u.total.requests + ' requests, ' +
      (u.total.prompt_tokens + u.total.completion_tokens) + ' tokens, ' + cost(u.total.cost_usd) + budget;
    table($('usagemodels'), ['model', 'requests', 'prompt tokens', 'completion tokens', 'cost'],
      byModel.data.map((r) => [r.model, r.requests, r.prompt_tokens, r.completion_tokens, cost(r.cost_usd)]));
    table($('usagetable'), ['date', 'model', 'requests', 'prompt tokens', 'completion tokens', 'cost'],
      u.data.map((r) => [r.date, r.model, r.requests, r.prompt_tokens, r.completion_tokens, cost(r.cost_usd)]));
    drawUsage(u.data);
  } catch (e) {
    $('usagestatus').textContent = e.message;
  }
}
$('usageform').addEventListener('submit', (ev) => { ev.preventDefault(); showUsage(); });

// ---- charts: SVG drawn by the page, no library ----
const SVGNS = 'http://www.w3.org/2000/svg';
const COLOURS = ['#2458d6', '#b25e00', '#2e7d32', '#8e24aa', '#00838f', '#b3261e'];
function svgDrawer(svg) {
  svg.textContent = '';
  return (name, attrs, text) => {
    const e = document.createElementNS(SVGNS, name);
    Object.entries(attrs).forEach(([k, v]) => e.setAttribute(k, v));
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  };
}

// bars draws value(row) per day, stacked by model.
function bars(svg, rows, value, label) {
  const el = svgDrawer(svg);
  const days = [...new Set(rows.map((r) => r.date))].sort();
  const models = [...new Set(rows.map((r) => r.model))].sort();
  const total = (d) => rows.filter((r) => r.date === d).reduce((s, r) => s + (value(r) || 0), 0);
  const max = Math.max(...days.map(total)) || 1;
  const w = 820, h = 180, bw = Math.max(4, Math.min(40, (w - 40) / Math.max(1, days.length) - 4));
  days.forEach((d, i) => {
    let y = h;
    models.forEach((m, k) => {
      const r = rows.find((x) => x.date === d && x.model === m);
      if (!r || !value(r)) return;
      const bh = (value(r) / max) * (h - 10);
      y -= bh;
      el('rect', { x: 30 + i * (bw + 4), y, width: bw, height: bh, fill: COLOURS[k % COLOURS.length] })
        .appendChild(document.createElementNS(SVGNS, 'title')).textContent = d + ' ' + m + ': ' + label(value(r));
    });
    if (days.length <= 16 || i % Math.ceil(days.length / 16) === 0) el('text', { x: 30 + i * (bw + 4), y: h + 14, 'font-size': 10 }, d.slice(5));
  });
  models.forEach((m, k) => el('text', { x: 30 + k * 160, y: h + 32, 'font-size': 11, fill: COLOURS[k % COLOURS.length] }, '■ ' + m));
  el('text', { x: 0, y: 12, 'font-size': 10 }, label(max));
}

function drawUsage(rows) {
  bars($('usagechart'), rows, (r) => r.prompt_tokens + r.completion_tokens, (v) => v + ' tokens');
  const priced = rows.some((r) => r.cost_usd !== null);
  $('usagecost').hidden = !priced;
  if (priced) bars($('usagecost'), rows, (r) => r.cost_usd, (v) => '$' + v.toFixed(4));
}

// line draws one figure of the fleet's history over time; a gap where no
// process recorded it. A limit (the backlog's threshold) is a dashed line.
function line(svg, points, value, unit, limit) {
  const el = svgDrawer(svg);
  const w = 820, h = 110, left = 40, top = 14;
  const vals = points.map(value);
  const known = vals.filter((v) => v !== null);
  const max = Math.max(limit || 0, ...known) || 1;
  const x = (i) => left + (i / Math.max(1, points.length - 1)) * (w - left - 10);
  const y = (v) => top + h - (v / max) * h;
  let d = '';
  vals.forEach((v, i) => { if (v !== null) d += (d && vals[i - 1] !== null ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(v).toFixed(1); });
  el('line', { x1: left, y1: top + h, x2: w - 10, y2: top + h, stroke: '#d9dee5' });
  if (limit) el('line', { x1: left, y1: y(limit), x2: w - 10, y2: y(limit), stroke: '#b25e00', 'stroke-dasharray': '4 3' });
  if (d) el('path', { d, fill: 'none', stroke: '#2458d6', 'stroke-width': 1.5 });
  vals.forEach((v, i) => { if (v !== null) el('circle', { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 1.8, fill: '#2458d6' }); }); // a lone point shows too
  el('text', { x: 0, y: 10, 'font-size': 10 }, fmt(max) + ' ' + unit);
  el('text', { x: left, y: top + h + 14, 'font-size': 10 }, '-15 min');
  el('text', { x: w - 40, y: top + h + 14, 'font-size': 10 }, 'now');
  const lastKnown = known.length ? known[known.length - 1] : null;
  el('text', { x: w - 200, y: 10, 'font-size': 11, class: 'latest' }, lastKnown === null ? 'no data' : 'latest ' + fmt(lastKnown) + ' ' + unit);
}
function fmt(v) { return Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1); }

let historyAt = 0;
async function refreshHistory() {
  if (Date.now() - historyAt < 10000) return; // the fleet records a point every 10 s
  historyAt = Date.now();
  const hist = await api('GET', '/health/queue/history');
  line($('backlogchart'), hist.points, (p) => p.backlog, 'jobs waiting', hist.threshold);
  line($('ratechart'), hist.points, (p) => p.jobs_per_second, 'jobs/s');
  line($('ttftchart'), hist.points, (p) => p.time_to_first_token_seconds, 's to first token');
}

loadHistory();
loadModels();
window.addEventListener('DOMContentLoaded', route); // once batches.js is in too