// llmem serve: the page. Plain script, no dependencies, no network beyond this server.
// Component colours match src/report/charts.cc.
'use strict';

const $ = (id) => document.getElementById(id);
const form = $('form');
const GIB = 1073741824;
const COLORS = {
  parameters: '#4e79a7', gradients: '#f28e2b', optimizer_states: '#e15759',
  master_weights: '#a0cbe8', weight_copies: '#76b7b2', activations: '#59a14f', logits_loss: '#edc948',
  temporaries: '#b07aa1', inputs: '#ff9da7', workspace: '#9c755f',
};
const CACHED = '#c7c7c7', CONTEXT = '#7f7f7f', COMM = '#3b3b3b';
const PHASE_BANDS = {setup: '#eeeeee', forward: '#dbe9f6', loss: '#fde2c8', backward: '#e2f0d9',
                     optimizer: '#efe0f5', load: '#f3ecd2'};

const gib = (b) => (b / GIB).toFixed(2) + ' GiB';
const commas = (n) => Number(n).toLocaleString('en-US');
const esc = (s) => String(s).replace(/[&<>"']/g,
    (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
const exact = (key, n) => `<span data-key="${key}">${commas(n)}</span>`;

function humanParams(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(n >= 1e10 ? 0 : 1) + 'B';
  return (n / 1e6).toFixed(0) + 'M';
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)};
  const res = await fetch(path, init);
  const type = res.headers.get('Content-Type') || '';
  const payload = type.startsWith('application/json') ? await res.json() : await res.text();
  if (!res.ok) {
    const err = new Error(payload && payload.error ? payload.error : 'HTTP ' + res.status);
    err.field = payload && payload.field;
    err.status = res.status;
    throw err;
  }
  return payload;
}

// ---- the form ---------------------------------------------------------------

function radio(name) { return form.querySelector(`input[name=${name}]:checked`).value; }
function setRadio(name, value) {
  const el = form.querySelector(`input[name=${name}][value="${value}"]`);
  if (el) el.checked = true;
}

function syncVisibility() {
  const fromConfig = radio('model_source') === 'config';
  $('model').hidden = fromConfig;
  $('config').hidden = !fromConfig;
  const ft = radio('finetune');
  $('lora-fields').hidden = ft === 'full';
  $('quant-field').style.visibility = ft === 'qlora' ? 'visible' : 'hidden';
  $('gpu').disabled = form.elements.gpu_mem.value !== '';
  $('torchtune-fields').hidden = form.elements.framework.value !== 'torchtune';
  $('hf-fields').hidden = form.elements.framework.value !== 'hf';
}

/// torchtune and LitGPT train in pure bf16 with SDPA: picking one sets those
/// (the user may change them after).
function frameworkDefaults() {
  const f = form.elements;
  const hf = f.framework.value === 'hf';
  f.precision.value = hf ? 'bf16-mixed' : 'bf16';
  f.attention.value = hf ? 'eager' : 'sdpa';
}

const kTorchtuneFlags = ['compile', 'packed', 'optimizer_in_bwd', 'activation_offload'];

/// The request: keys are `llmem estimate`'s long options with '-' -> '_'.
function buildRequest() {
  const f = form.elements;
  const r = {};
  if (radio('model_source') === 'config') {
    try {
      r.model = JSON.parse(f.config.value);
    } catch (e) {
      const err = new Error('config.json: ' + e.message);
      err.field = 'model';
      throw err;
    }
  } else {
    r.model = f.model.value;
  }
  if (f.gpu_mem.value !== '') r.gpu_mem = Number(f.gpu_mem.value);
  else r.gpu = f.gpu.value;
  const dp = Number(f.dp.value), tp = Number(f.tp.value), pp = Number(f.pp.value);
  if (f.method.value !== 'single' || dp !== 1 || tp !== 1 || pp !== 1) {
    Object.assign(r, {method: f.method.value, dp, tp, pp});
  }
  r.batch = Number(f.batch.value);
  r.seq = Number(f.seq.value);
  if (Number(f.grad_accum.value) !== 1) r.grad_accum = Number(f.grad_accum.value);
  r.precision = f.precision.value;
  r.optimizer = f.optimizer.value;
  r.attention = f.attention.value;
  if (f.grad_ckpt.checked) r.grad_ckpt = true;
  if (f.framework.value !== 'hf') r.framework = f.framework.value;
  if (f.framework.value === 'torchtune') {
    for (const k of kTorchtuneFlags) if (f[k].checked) r[k] = true;
  }
  if (f.framework.value === 'hf' && f.liger.checked) r.liger = true;
  const ft = radio('finetune');
  if (ft !== 'full') {
    r.lora_rank = Number(f.lora_rank.value);
    r.lora_alpha = Number(f.lora_alpha.value);
    const targets = f.lora_targets.value.split(',').map((s) => s.trim()).filter(Boolean);
    if (targets.length) r.lora_targets = targets;
    if (ft === 'qlora') r.quant = f.quant.value;
  }
  return r;
}

function commandLine(r) {
  const parts = ['llmem estimate'];
  for (const [k, v] of Object.entries(r)) {
    const opt = '--' + k.replace(/_/g, '-');
    if (typeof v === 'object' && !Array.isArray(v)) parts.push(opt + ' config.json');
    else if (v === true) parts.push(opt);
    else parts.push(opt + ' ' + (Array.isArray(v) ? v.join(',') : v));
  }
  return parts.join(' ');
}

/// URL query parameters prefill the form (?model=...&batch=4&seq=512); the page
/// then runs the estimate, so a link is a shareable question.
function applyQuery() {
  const q = new URLSearchParams(location.search);
  const f = form.elements;
  let any = false;
  for (const [k, v] of q) {
    any = true;
    if (k === 'model') {
      if (![...f.model.options].some((o) => o.value === v)) f.model.add(new Option(v, v));
      f.model.value = v;
      setRadio('model_source', 'catalog');
    } else if (k === 'grad_ckpt' || k === 'liger' || kTorchtuneFlags.includes(k)) {
      f[k].checked = v !== 'false' && v !== '0';
    } else if (k === 'lora_rank') {
      f.lora_rank.value = v;
      if (radio('finetune') === 'full') setRadio('finetune', 'lora');
    } else if (k === 'quant') {
      f.quant.value = v;
      setRadio('finetune', 'qlora');
    } else if (f[k] && f[k].tagName) {
      f[k].value = v;
    }
  }
  return any;
}

function updateQuery(r) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(r)) {
    if (typeof v === 'object' && !Array.isArray(v)) return;  // a pasted config: no link
    q.set(k, Array.isArray(v) ? v.join(',') : String(v));
  }
  history.replaceState(null, '', '?' + q.toString());
}

// ---- rendering --------------------------------------------------------------

function renderVerdict(j) {
  const cuda = j.setup.device !== 'cpu';
  const cls = !cuda ? 'cpu' : j.fits ? 'fits' : 'nofit';
  const label = !cuda ? 'CPU' : j.fits ? 'FITS' : 'DOES NOT FIT';
  const kpi = (big, label, key, n) =>
      `<div class="kpi"><b>${big}</b><span>${label}</span><small>${exact(key, n)} B</small></div>`;
  let html = `<span class="badge" id="verdict-badge">${label}</span>`;
  if (cuda) {
    html += kpi(gib(j.peak.device_bytes), 'device peak (nvidia-smi)', 'peak.device_bytes',
                j.peak.device_bytes);
    html += kpi(gib(j.gpu.capacity_bytes), esc(j.gpu.name) + ' capacity', 'gpu.capacity_bytes',
                j.gpu.capacity_bytes);
    const h = j.headroom_bytes;
    html += kpi((h < 0 ? '−' : '') + gib(Math.abs(h)), 'headroom', 'headroom_bytes', h);
  }
  html += kpi(gib(j.peak.allocated_bytes), 'allocated peak', 'peak.allocated_bytes',
              j.peak.allocated_bytes);
  html += `<div class="title">${esc(j.model.name)} · ${esc(j.model.family)} · ` +
      `${commas(j.model.params)} parameters, ${commas(j.model.trainable_params)} trainable</div>`;
  const v = $('verdict');
  v.className = cls;
  v.innerHTML = html;
  v.hidden = false;
}

function renderBreakdown(j) {
  const p = j.peak, cap = j.gpu.capacity_bytes, cuda = j.setup.device !== 'cpu';
  const segs = Object.entries(j.components).map(([k, b]) => [k, b, COLORS[k] || '#bab0ac']);
  if (cuda) {
    segs.push(['allocator cache (reserved − allocated)', p.reserved_bytes - p.allocated_bytes,
               CACHED]);
    segs.push(['CUDA context', j.gpu.context_bytes, CONTEXT]);
    if (j.gpu.comm_bytes > 0) segs.push(['NCCL buffers', j.gpu.comm_bytes, COMM]);
  }
  const device = Math.max(p.device_bytes, p.allocated_bytes);
  const scale = Math.max(device, cap, 1);
  const W = 960, L = 10, R = 10, T = 34, H = 46, PW = W - L - R;
  const x = (b) => L + PW * b / scale;
  let s = `<svg viewBox="0 0 ${W} 110" role="img" font-family="sans-serif" font-size="12">` +
      `<rect x="${L}" y="${T}" width="${PW}" height="${H}" fill="#f4f4f4" stroke="#ccc"/>`;
  let at = 0;
  for (const [name, b, color] of segs) {
    if (b <= 0) continue;
    s += `<rect x="${x(at)}" y="${T}" width="${x(at + b) - x(at)}" height="${H}" ` +
        `fill="${color}"><title>${esc(name)}: ${gib(b)}</title></rect>`;
    at += b;
  }
  s += `<text x="${L}" y="20" font-size="13">0</text>`;
  if (cuda && cap > 0) {
    const cx = x(cap);
    s += `<line x1="${cx}" x2="${cx}" y1="${T - 10}" y2="${T + H + 10}" ` +
        `stroke="${device > cap ? '#c0392b' : '#222'}" stroke-width="2.5" stroke-dasharray="5,3"/>` +
        `<text x="${cx - 4}" y="20" text-anchor="end" font-size="13">${esc(j.gpu.name)} ` +
        `capacity ${gib(cap)}</text>`;
  }
  const dx = Math.min(x(device), W - R);
  s += `<text x="${dx}" y="${T + H + 24}" text-anchor="${dx > W / 2 ? 'end' : 'start'}" ` +
      `font-size="13" font-weight="bold">peak ${gib(device)}</text></svg>`;
  $('breakdown').innerHTML = s;
  let rows = '<tr><th>component</th><th class="n">GiB</th><th class="n">bytes</th>' +
      '<th class="n">share</th></tr>';
  const total = cuda ? p.device_bytes : p.allocated_bytes;
  for (const [name, b, color] of segs) {
    const key = name in j.components ? 'components.' + name :
        name === 'CUDA context' ? 'gpu.context_bytes' :
        name === 'NCCL buffers' ? 'gpu.comm_bytes' : 'cached';
    rows += `<tr><td><span class="sw" style="background:${color}"></span>${esc(name)}</td>` +
        `<td class="n">${gib(b)}</td><td class="n">${exact(key, b)}</td>` +
        `<td class="n">${total ? (100 * b / total).toFixed(1) : '0.0'} %</td></tr>`;
  }
  $('components').innerHTML = rows;
  $('breakdown-title').textContent = `At the peak (${p.phase}` +
      (p.layer >= 0 ? `, layer ${p.layer}` : '') + `, step ${p.step})`;
  $('breakdown-card').hidden = false;
}

function renderTimeline(csv, j) {
  const rows = csv.trim().split('\n').slice(1).map((line) => {
    const c = line.split(',');
    return {event: +c[0], step: +c[1], phase: c[2], layer: +c[3], alloc: +c[4], res: +c[5]};
  });
  if (!rows.length) { $('timeline-card').hidden = true; return; }
  const W = 960, H = 380, L = 70, R = 16, T = 16, B = 40, PW = W - L - R, PH = H - T - B;
  const cap = j.setup.device !== 'cpu' ? j.gpu.capacity_bytes : 0;
  const ymax = Math.max(j.peak.reserved_bytes, cap, 1);
  const xmax = rows[rows.length - 1].event + 1;
  const x = (e) => L + PW * e / xmax;
  const y = (b) => T + PH * (1 - b / ymax);
  let s = `<svg viewBox="0 0 ${W} ${H}" role="img" font-family="sans-serif" font-size="12">`;
  let start = 0;
  for (let i = 1; i <= rows.length; i++) {
    if (i < rows.length && rows[i].phase === rows[start].phase &&
        rows[i].step === rows[start].step) continue;
    const x0 = x(rows[start].event), x1 = i < rows.length ? x(rows[i].event) : L + PW;
    s += `<rect x="${x0}" y="${T}" width="${Math.max(0, x1 - x0)}" height="${PH}" ` +
        `fill="${PHASE_BANDS[rows[start].phase] || '#eee'}"/>`;
    const label = rows[start].phase + (rows[start].step === 1 ? ' (1st)' : '');
    if (x1 - x0 > label.length * 6.5 + 8) {
      s += `<text x="${x0 + 3}" y="${T + 13}" fill="#555">${label}</text>`;
    }
    start = i;
  }
  for (let t = 0; t <= 4; t++) {
    const b = ymax * t / 4;
    s += `<line x1="${L}" x2="${L + PW}" y1="${y(b)}" y2="${y(b)}" stroke="#fff"/>` +
        `<text x="${L - 6}" y="${y(b) + 4}" text-anchor="end">${gib(b)}</text>`;
  }
  const line = (key, color) => `<polyline fill="none" stroke="${color}" stroke-width="1.6" ` +
      `points="${rows.map((r) => x(r.event).toFixed(1) + ',' + y(r[key]).toFixed(1)).join(' ')}"/>`;
  s += line('res', '#d62728') + line('alloc', '#1f77b4');
  if (cap > 0) {
    s += `<line x1="${L}" x2="${L + PW}" y1="${y(cap)}" y2="${y(cap)}" stroke="#111" ` +
        `stroke-dasharray="6,4"/><text x="${L + 4}" y="${y(cap) - 4}">${esc(j.gpu.name)} ` +
        `capacity ${gib(cap)}</text>`;
  }
  s += `<text x="${L}" y="${H - 12}"><tspan fill="#1f77b4">— allocated</tspan>   ` +
      `<tspan fill="#d62728">— reserved</tspan>   <tspan fill="#666">x: allocation events ` +
      `(${commas(j.events)}); bands: load, then the phases of the first and a steady step</tspan></text></svg>`;
  $('timeline').innerHTML = s;
  $('timeline-card').hidden = false;
}

function genericTable(el, list) {
  const keys = [...new Set(list.flatMap((o) => Object.keys(o)))];
  let html = '<tr>' + keys.map((k) => `<th>${esc(k)}</th>`).join('') + '</tr>';
  for (const o of list) {
    html += '<tr>' + keys.map((k) => {
      const v = o[k];
      if (typeof v === 'number' && /bytes/.test(k)) return `<td class="n">${gib(v)}</td>`;
      if (typeof v === 'object' && v !== null) return `<td>${esc(JSON.stringify(v))}</td>`;
      return `<td>${esc(v === undefined ? '' : v)}</td>`;
    }).join('') + '</tr>';
  }
  el.innerHTML = html;
}

function compactRanks(list) {
  if (list.length > 1 && list.every((r, i) => i === 0 || r === list[i - 1] + 1)) {
    return `${list[0]}–${list[list.length - 1]}`;
  }
  return list.join(', ');
}

/// One small stacked bar per rank role: its components, cache and context against the capacity.
function miniBar(r, j) {
  const cap = j.gpu.capacity_bytes, W = 220, H = 14;
  const scale = Math.max(r.device_bytes, cap, 1);
  let s = `<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img">` +
      `<rect width="${W}" height="${H}" fill="#f4f4f4"/>`;
  let at = 0;
  const seg = (b, color) => {
    if (b <= 0) return;
    s += `<rect x="${W * at / scale}" width="${W * b / scale}" height="${H}" fill="${color}"/>`;
    at += b;
  };
  for (const [k, b] of Object.entries(r.components || {})) seg(b, COLORS[k] || '#bab0ac');
  seg(r.reserved_bytes - r.allocated_bytes, CACHED);
  seg(r.device_bytes - r.reserved_bytes, CONTEXT);
  if (cap > 0) {
    const cx = W * cap / scale;
    s += `<line x1="${cx}" x2="${cx}" y1="0" y2="${H}" stroke="#111" stroke-width="2"/>`;
  }
  return s + '</svg>';
}

function renderRanks(j) {
  const ranks = j.ranks || [];
  $('ranks-card').hidden = !ranks.length;
  if (!ranks.length) return;
  const cap = j.gpu.capacity_bytes;
  let html = '<tr><th>role</th><th>ranks</th><th class="n">allocated</th>' +
      '<th class="n">reserved</th><th class="n">device</th><th>peak in</th><th>fits</th>' +
      '<th>against the capacity</th></tr>';
  ranks.forEach((r, i) => {
    const fits = !cap || r.device_bytes <= cap;
    html += `<tr><td>${esc(r.role)}</td><td>${compactRanks(r.ranks || [])}</td>` +
        `<td class="n" title="${commas(r.allocated_bytes)} B">${gib(r.allocated_bytes)}</td>` +
        `<td class="n" title="${commas(r.reserved_bytes)} B">${gib(r.reserved_bytes)}</td>` +
        `<td class="n"><span hidden data-key="ranks.${i}.device_bytes">` +
        `${commas(r.device_bytes)}</span>${gib(r.device_bytes)}</td>` +
        `<td>${esc(r.phase || '')}</td><td>${fits ? 'yes' : '<b class="no">no</b>'}</td>` +
        `<td>${miniBar(r, j)}</td></tr>`;
  });
  $('ranks').innerHTML = html;
}

function renderDetails(j) {
  const rows = [['allocated', 'peak.allocated_bytes', j.peak.allocated_bytes]];
  if (j.setup.device !== 'cpu') {
    rows.push(['reserved', 'peak.reserved_bytes', j.peak.reserved_bytes]);
    rows.push(['device (nvidia-smi)', 'peak.device_bytes', j.peak.device_bytes]);
  }
  rows.push(['first step', 'first_step_peak_bytes', j.first_step_peak_bytes]);
  rows.push(['steady step', 'steady_step_peak_bytes', j.steady_step_peak_bytes]);
  for (const [k, b] of Object.entries(j.phase_peaks)) rows.push([k + ' (steady)', 'phase_peaks.' + k, b]);
  $('peaks').innerHTML = '<tr><th></th><th class="n">GiB</th><th class="n">bytes</th></tr>' +
      rows.map(([label, key, b]) => `<tr><td>${label}</td><td class="n">${gib(b)}</td>` +
               `<td class="n">${exact(key, b)}</td></tr>`).join('');
  const notes = (j.attention_kernel ? [`attention: ${j.attention_kernel}`] : []).concat(j.notes || []);
  $('notes').innerHTML = notes.map((n) => `<li>${esc(n)}</li>`).join('');
  $('details-card').hidden = false;
}

function showError(err) {
  const e = $('error');
  e.textContent = (err.field ? `${err.field}: ` : '') + err.message;
  e.hidden = false;
  for (const el of form.querySelectorAll('.bad')) el.classList.remove('bad');
  if (err.field && form.elements[err.field] && form.elements[err.field].classList) {
    form.elements[err.field].classList.add('bad');
  }
}

let lastRequest = null;

async function run() {
  $('error').hidden = true;
  let r;
  try {
    r = buildRequest();
  } catch (err) {
    showError(err);
    return;
  }
  $('cmdline').textContent = commandLine(r);
  $('run').disabled = true;
  $('run').textContent = 'Estimating…';
  document.body.dataset.state = 'running';
  try {
    const j = await api('/api/estimate', r);
    lastRequest = r;
    $('placeholder').hidden = true;
    renderVerdict(j);
    renderBreakdown(j);
    renderRanks(j);
    renderDetails(j);
    updateQuery(r);
    $('report-link').hidden = false;
    const csv = await api('/api/estimate', Object.assign({}, r, {format: 'csv'}));
    renderTimeline(csv, j);
    try {
      genericTable($('plan'), (await api('/api/plan', r)).plans || []);
      $('plan-card').hidden = false;
    } catch (e) {
      $('plan-card').hidden = true;  // no plan API in this build, or no plan for this request
    }
    document.body.dataset.state = 'done';
  } catch (err) {
    showError(err);
    document.body.dataset.state = 'error';
  } finally {
    $('run').disabled = false;
    $('run').textContent = 'Estimate';
  }
}

async function downloadReport(ev) {
  ev.preventDefault();
  if (!lastRequest) return;
  try {
    const html = await api('/api/estimate', Object.assign({}, lastRequest, {format: 'html'}));
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([html], {type: 'text/html'}));
    a.download = 'llmem-report.html';
    a.click();
  } catch (err) {
    showError(err);
  }
}

async function init() {
  form.elements.framework.addEventListener('change', frameworkDefaults);
  form.addEventListener('change', syncVisibility);
  form.addEventListener('input', syncVisibility);
  form.addEventListener('submit', (ev) => { ev.preventDefault(); run(); });
  $('report-link').addEventListener('click', downloadReport);
  try {
    const [models, gpus] = await Promise.all([api('/api/models'), api('/api/gpus')]);
    const byFamily = {};
    for (const m of models.models) (byFamily[m.family] = byFamily[m.family] || []).push(m);
    const sel = $('model');
    sel.innerHTML = '';
    for (const fam of Object.keys(byFamily).sort()) {
      const g = document.createElement('optgroup');
      g.label = fam;
      for (const m of byFamily[fam]) g.appendChild(new Option(`${m.name} (${humanParams(m.params)})`, m.name));
      sel.appendChild(g);
    }
    sel.value = 'facebook/opt-1.3b';
    const gsel = $('gpu');
    gsel.innerHTML = '';
    for (const g of gpus.gpus) gsel.add(new Option(`${g.name} (${gib(g.capacity_bytes)})`, g.name));
    gsel.value = 'A100-80GB';
  } catch (err) {
    showError(err);
  }
  const fromQuery = applyQuery();
  syncVisibility();
  $('cmdline').textContent = commandLine(buildRequest());
  if (fromQuery) run();
}

init();
