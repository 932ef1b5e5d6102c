'use strict';
// The console's batches view (loaded after app.js, whose $, api, table and
// route it uses): the tenant's batches (/v1/batches), newest first; a batch's
// details, followed every 2 s until it ends; and the lines of its files, the
// failed ones linked to their jobs in the jobs view (an answered line's job
// is gone once its batch keeps the answer). URLs: #/batches, #/batches/<batch id>,
// #/batches/<batch id>/<file id>.

const BATCH_RUNNING = ['validating', 'in_progress', 'finalizing', 'cancelling'];
const FILE_LINES_SHOWN = 200;
const batchView = { want: '', shown: null, file: '', timer: null };

function batchEnded(status) { return !BATCH_RUNNING.includes(status); }
function batchTime(s, short) { return s ? new Date(s * 1000).toLocaleString(undefined, short ? { dateStyle: 'short', timeStyle: 'short' } : {}) : ''; }
function batchHash(id, file) { return '#/batches/' + encodeURIComponent(id) + (file ? '/' + encodeURIComponent(file) : ''); }
function batchLink(text, hash) {
  const a = document.createElement('a');
  a.href = hash;
  a.textContent = text;
  return a;
}

// batchProgress is a batch's bar: its answered lines (completed or failed)
// of its total.
function batchProgress(b) {
  const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
  const p = document.createElement('progress');
  p.max = Math.max(c.total, 1);
  p.value = c.completed + c.failed;
  p.title = p.value + ' of ' + c.total + ' lines answered';
  return p;
}
function batchCounts(b) {
  const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
  return c.completed + ' / ' + c.failed + ' / ' + c.total;
}

// showBatches is the view at #/batches[/<id>[/<file id>]] (route()).
function showBatches(id, file) {
  if (!id || !$('batchlist').rows.length) listBatches(false);
  if (!id) {
    batchView.want = '';
    batchView.shown = null;
    $('batchview').hidden = true;
  } else if (id !== batchView.want || !batchView.shown) {
    selectBatch(id);
  }
  if (!file) {
    batchView.file = '';
    $('fileview').hidden = true;
  } else if (file !== batchView.file) {
    showBatchFile(file);
  }
  followBatches();
}

// batchRow shows b in the list: its row updated, or added at the end when add.
function batchRow(b, add) {
  let row = [...$('batchlist').rows].find((r) => r.dataset.id === b.id);
  if (!row && !add) return;
  if (!row) row = $('batchlist').insertRow();
  row.textContent = '';
  row.dataset.id = b.id;
  row.dataset.status = b.status;
  row.classList.toggle('selected', b.id === batchView.want);
  [batchLink(b.id, batchHash(b.id)), b.status, b.endpoint, batchTime(b.created_at, true), batchProgress(b), batchCounts(b)].forEach((c) => {
    const td = row.insertCell();
    if (c instanceof Node) td.appendChild(c); else td.textContent = c;
  });
}

async function listBatches(more) {
  const q = new URLSearchParams({ limit: '20' });
  const rows = $('batchlist').rows;
  if (more && rows.length > 1) q.set('after', rows[rows.length - 1].dataset.id);
  try {
    const page = await api('GET', '/v1/batches?' + q);
    if (!more) table($('batchlist'), ['batch', 'status', 'endpoint', 'created', 'progress', 'completed / failed / total'], []);
    page.data.forEach((b) => batchRow(b, true));
    $('batchmore').hidden = !page.has_more;
    $('batchstatusline').textContent = ($('batchlist').rows.length - 1) + ' batches shown';
    followBatches();
  } catch (e) {
    $('batchstatusline').textContent = e.message;
  }
}
$('batchmore').addEventListener('click', () => listBatches(true));

async function selectBatch(id) {
  batchView.want = id;
  batchView.shown = null;
  [...$('batchlist').rows].forEach((r) => r.classList.toggle('selected', r.dataset.id === id));
  $('batchview').hidden = false;
  $('batchtitle').textContent = id;
  $('batchinfo').textContent = '';
  $('batcherrors').textContent = '';
  $('batcherrorshead').hidden = true;
  $('batchview').scrollIntoView({ block: 'start' });
  try {
    showBatch(await api('GET', '/v1/batches/' + encodeURIComponent(id)));
  } catch (e) {
    if (batchView.want === id) $('batchinfo').textContent = e.message;
  }
}

// showBatch shows a batch's details, its input errors and its files' links.
function showBatch(b) {
  if (b.id !== batchView.want) return;
  batchView.shown = b;
  batchRow(b, false);
  const t = $('batchinfo');
  t.textContent = '';
  const files = document.createElement('span');
  [['input', b.input_file_id], ['output', b.output_file_id], ['error', b.error_file_id]].forEach(([kind, id]) => {
    if (!id) return;
    if (files.childNodes.length) files.appendChild(document.createTextNode(' · '));
    files.appendChild(document.createTextNode(kind + ' '));
    const a = files.appendChild(batchLink(id, batchHash(b.id, id)));
    a.dataset.kind = kind;
  });
  const progress = document.createElement('span');
  progress.append(batchProgress(b), ' ' + batchCounts(b) + ' (completed / failed / total)');
  [['status', b.status], ['endpoint', b.endpoint], ['progress', progress], ['files', files],
    ['created', batchTime(b.created_at)], ['in progress', batchTime(b.in_progress_at)], ['finalizing', batchTime(b.finalizing_at)],
    ['completed', batchTime(b.completed_at)], ['failed', batchTime(b.failed_at)], ['expired', batchTime(b.expired_at)],
    ['cancelling', batchTime(b.cancelling_at)], ['cancelled', batchTime(b.cancelled_at)],
    ['expires', batchEnded(b.status) ? '' : batchTime(b.expires_at)],
    ['metadata', b.metadata ? JSON.stringify(b.metadata) : '']].forEach(([k, v]) => {
    if (v === '') return;
    const row = t.insertRow();
    row.dataset.field = k;
    const th = document.createElement('th');
    th.textContent = k;
    row.appendChild(th);
    const td = row.insertCell();
    if (v instanceof Node) td.appendChild(v); else td.textContent = v;
  });
  const errs = (b.errors && b.errors.data) || [];
  $('batcherrorshead').hidden = !errs.length;
  if (errs.length) table($('batcherrors'), ['line', 'code', 'message'], errs.map((e) => [e.line, e.code, e.message]));
  else $('batcherrors').textContent = '';
}

// followBatches refreshes, every 2 s while the view shows, the batches shown
// that have not ended: the one selected and the list's rows.
function followBatches() {
  clearTimeout(batchView.timer);
  batchView.timer = setTimeout(async () => {
    if ($('batches').hidden) return;
    const ids = [...$('batchlist').rows].filter((r) => r.dataset.id && !batchEnded(r.dataset.status)).map((r) => r.dataset.id).slice(0, 20);
    const sel = batchView.shown;
    if (sel && !batchEnded(sel.status) && !ids.includes(sel.id)) ids.push(sel.id);
    if (!ids.length) return;
    await Promise.all(ids.map(async (id) => {
      try {
        const b = await api('GET', '/v1/batches/' + encodeURIComponent(id));
        batchRow(b, false);
        if (b.id === batchView.want) showBatch(b);
      } catch (e) {
        $('batchstatusline').textContent = e.message;
      }
    }));
    followBatches();
  }, 2000);
}

// showBatchFile shows a file's first lines: the content is read with the
// API key (a link to it could not send the header), each line with its
// custom_id, its status and its job.
async function showBatchFile(id) {
  batchView.file = id;
  $('fileview').hidden = false;
  $('filetitle').textContent = id;
  $('filenote').textContent = 'loading…';
  $('filelines').textContent = '';
  $('fileview').scrollIntoView({ block: 'start' });
  try {
    const text = await api('GET', '/v1/files/' + encodeURIComponent(id) + '/content', null, true);
    if (batchView.file !== id) return;
    const lines = text.split('\n').filter((l) => l.trim());
    $('filenote').textContent = lines.length > FILE_LINES_SHOWN
      ? 'the first ' + FILE_LINES_SHOWN + ' of ' + lines.length + ' lines' : lines.length + (lines.length === 1 ? ' line' : ' lines');
    table($('filelines'), ['line', 'custom_id', 'status', 'job'], lines.slice(0, FILE_LINES_SHOWN).map((raw, i) => {
      let l;
      try { l = JSON.parse(raw); } catch (e) { return [i + 1, 'not JSON: ' + raw.slice(0, 80), '', '']; }
      const res = l.response, err = l.error;
      let job = res && res.request_id;
      // A line answered without a job (not yet started at the window's end,
      // over budget, refused) has a batch_req_<batch>_<line> id: no link.
      const rest = typeof l.id === 'string' && l.id.startsWith('batch_req_') ? l.id.slice('batch_req_'.length) : '';
      if (!job && err && rest && !rest.includes('_')) job = 'job_' + rest;
      const status = res ? String(res.status_code) : err ? err.code : ''; // an input line has neither
      // An answered line's job is gone (its line holds the answer): its id, unlinked.
      const kept = err || (res && res.status_code !== 200);
      return [i + 1, l.custom_id, status, job && kept ? batchLink(job, '#/jobs/' + encodeURIComponent(job)) : job || ''];
    }));
  } catch (e) {
    if (batchView.file === id) $('filenote').textContent = e.message;
  }
}
