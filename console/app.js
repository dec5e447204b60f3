// The streamgate console: plain ES modules, no framework. It uses only the public API (with the signed-in
// principal's key, kept in session storage) and MQTT over WebSocket (mqtt.js, the same principal and
// key), so every page shows exactly what that principal's grants allow.
import mqtt from './vendor/mqtt.esm.js'

const $ = (sel) => document.querySelector(sel)
const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? '' : String(v))
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  return el
}

const session = {
  get principal () { return sessionStorage.getItem('sg.principal') },
  get key () { return sessionStorage.getItem('sg.key') },
  set (principal, key) { sessionStorage.setItem('sg.principal', principal); sessionStorage.setItem('sg.key', key) },
  clear () { sessionStorage.removeItem('sg.principal'); sessionStorage.removeItem('sg.key') }
}

/** Calls the API; resolves with { status, body }; a problem+json answer's `detail` is kept. */
async function api (method, url, body, headers = {}) {
  const res = await fetch(url, {
    method,
    headers: { authorization: `Bearer ${session.key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {})
  })
  const text = await res.text()
  let json
  try { json = text.length > 0 ? JSON.parse(text) : null } catch { json = { detail: text } }
  return { status: res.status, body: json, etag: res.headers.get('etag') }
}

let stopPage = () => {}

function show (page) {
  stopPage()
  stopPage = () => {}
  for (const a of document.querySelectorAll('nav a')) {
    if (a.getAttribute('href') === `#/${page.startsWith('dataset/') ? 'datasets' : page}`) a.setAttribute('aria-current', 'page')
    else a.removeAttribute('aria-current')
  }
  const root = $('#page')
  root.replaceChildren()
  const pages = { overview, datasets, tail, query, principals, audit }
  if (page.startsWith('dataset/')) dataset(root, decodeURIComponent(page.slice(8)))
  else (pages[page] ?? overview)(root)
}

// ---- overview: status every second, as small charts

const WINDOW = 60

function sparkline (values) {
  const max = Math.max(1, ...values)
  const pts = values.map((v, i) => `${(i / (WINDOW - 1)) * 100},${40 - (v / max) * 38}`).join(' ')
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg')
  svg.setAttribute('viewBox', '0 0 100 40')
  svg.setAttribute('preserveAspectRatio', 'none')
  svg.setAttribute('aria-hidden', 'true')
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline')
  line.setAttribute('points', pts)
  svg.append(line)
  return svg
}

function overview (root) {
  root.append(h('h2', {}, 'Overview'), h('p', { class: 'error', role: 'alert', id: 'overview-error' }))
  const cards = h('div', { class: 'cards', id: 'cards' })
  root.append(cards)
  const series = { in: [], accepted: [], rejected: [], sessions: [] }
  const push = (k, v) => { (series[k] ??= []).push(v); if (series[k].length > WINDOW) series[k].shift() }
  let last = null
  const tick = async () => {
    const r = await api('GET', '/v1/status')
    if (r.status !== 200) { $('#overview-error').textContent = r.body?.detail ?? `status ${r.status}`; return }
    const s = r.body
    const rejected = Object.values(s.rejected ?? {}).reduce((a, n) => a + n, 0)
    const now = { t: performance.now(), accepted: s.journal.appended, rejected }
    if (last !== null) {
      const secs = Math.max(0.001, (now.t - last.t) / 1000)
      const acc = Math.max(0, (now.accepted - last.accepted) / secs)
      const rej = Math.max(0, (now.rejected - last.rejected) / secs)
      for (const [k, v] of [['in', acc + rej], ['accepted', acc], ['rejected', rej]]) push(k, v)
    }
    last = now
    push('sessions', s.mqtt.sessions)
    for (const c of s.consumers) push(`lag-${c.name}`, c.lag)
    const card = (id, title, value, values) => h('div', { class: 'card', 'data-testid': id }, h('h3', {}, title), h('div', { class: 'value' }, value), values ? sparkline(values) : '')
    const rate = (k) => `${Math.round(series[k].at(-1) ?? 0)}/s`
    cards.replaceChildren(
      card('in', 'Messages in', rate('in'), series.in),
      card('accepted', 'Accepted', rate('accepted'), series.accepted),
      card('rejected', 'Rejected', rate('rejected'), series.rejected),
      card('sessions', 'MQTT sessions', s.mqtt.sessions, series.sessions),
      ...s.consumers.map((c) => card(`lag-${c.name}`, `Lag: ${c.name}`, `${c.lag} entries${c.lagSeconds !== null ? `, ${c.lagSeconds.toFixed(1)} s` : ''}`, series[`lag-${c.name}`])),
      ...s.consumers.filter((c) => c.breaker !== null).map((c) => card(`breaker-${c.name}`, `Breaker: ${c.name}`, c.breaker.state))
    )
  }
  tick()
  const timer = setInterval(tick, 1000)
  stopPage = () => clearInterval(timer)
}

// ---- datasets: list and create

async function datasets (root) {
  root.append(h('h2', {}, 'Datasets'))
  const list = h('div', { class: 'scroll' })
  const error = h('p', { class: 'error', role: 'alert' })
  const load = async () => {
    const r = await api('GET', '/v1/datasets?limit=200')
    if (r.status !== 200) { error.textContent = r.body?.detail ?? `status ${r.status}`; return }
    list.replaceChildren(h('table', {},
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Id'), h('th', { scope: 'col' }, 'Version'), h('th', { scope: 'col' }, 'Fields'), h('th', { scope: 'col' }, 'Description'))),
      h('tbody', {}, r.body.datasets.map((d) => h('tr', {}, h('td', {}, h('a', { href: `#/dataset/${d.id}` }, d.id)), h('td', {}, d.version), h('td', {}, [...d.schema.tags.map((t) => `${t} (tag)`), ...Object.keys(d.schema.fields)].join(', ')), h('td', {}, d.description))))))
  }
  const form = h('form', { 'aria-labelledby': 'create-title' },
    h('h3', { id: 'create-title' }, 'Create a dataset'),
    h('label', { for: 'ds-id' }, 'Id'), h('input', { id: 'ds-id', required: true, pattern: '[a-z][a-z0-9_]{0,62}' }),
    h('label', { for: 'ds-schema' }, 'Schema (JSON)'),
    h('textarea', { id: 'ds-schema', spellcheck: 'false' }),
    h('button', { type: 'submit' }, 'Create'),
    h('p', { role: 'status', id: 'create-result' }))
  form.querySelector('textarea').value = JSON.stringify({ timestamp: 'ts', tags: ['site'], fields: { temp: 'double' } }, null, 2)
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault()
    const out = $('#create-result')
    let schema
    try { schema = JSON.parse($('#ds-schema').value) } catch (err) { out.className = 'error'; out.textContent = `The schema is not JSON: ${err.message}`; return }
    const r = await api('POST', '/v1/datasets', { id: $('#ds-id').value, schema })
    out.className = r.status === 201 ? 'ok' : 'error'
    out.textContent = r.status === 201 ? `Created ${r.body.id}` : (r.body?.detail ?? `status ${r.status}`)
    if (r.status === 201) load()
  })
  root.append(error, list, form)
  await load()
}

// ---- one dataset: its schema (with the compatibility answer before saving), its grants, its rejects

async function dataset (root, id) {
  const enc = encodeURIComponent(id)
  root.append(h('h2', {}, `Dataset ${id}`))
  const error = h('p', { class: 'error', role: 'alert' })
  const d = await api('GET', `/v1/datasets/${enc}`)
  if (d.status !== 200) { root.append(h('p', { class: 'error', role: 'alert' }, d.body?.detail ?? `status ${d.status}`)); return }
  let etag = d.etag
  // Schema: check, then save in place (compatible) or as a new version.
  const schemaText = h('textarea', { id: 'schema-edit', spellcheck: 'false' })
  schemaText.value = JSON.stringify(d.body.schema, null, 2)
  const answer = h('div', { role: 'status', id: 'schema-answer' })
  const parsed = () => { try { return JSON.parse(schemaText.value) } catch (err) { answer.className = 'error'; answer.textContent = `Not JSON: ${err.message}`; return null } }
  const check = h('button', { type: 'button', onclick: async () => {
    const schema = parsed()
    if (schema === null) return
    const r = await api('POST', `/v1/datasets/${enc}/compatibility`, { schema })
    if (r.status !== 200) { answer.className = 'error'; answer.textContent = r.body?.detail ?? `status ${r.status}`; return }
    const save = h('button', { type: 'button', id: 'schema-save', onclick: async () => {
      const w = r.body.compatible
        ? await api('PUT', `/v1/datasets/${enc}`, { schema }, { 'if-match': etag })
        : await api('POST', `/v1/datasets/${enc}/versions`, { schema })
      answer.className = w.status < 300 ? 'ok' : 'error'
      answer.textContent = w.status < 300 ? `Saved: version ${w.body.version}` : (w.body?.detail ?? `status ${w.status}`)
      if (w.etag) etag = w.etag
    } }, r.body.compatible ? 'Save in place' : 'Save as a new version')
    answer.className = r.body.compatible ? 'ok' : 'error'
    answer.replaceChildren(h('p', {}, r.body.compatible ? 'Compatible: the current version changes in place.' : 'Not compatible: records published from now on would go to a new version.'),
      r.body.problems.length > 0 ? h('ul', {}, r.body.problems.map((p) => h('li', {}, p))) : '', save)
  } }, 'Check compatibility')
  // Grants
  const grants = h('tbody', { id: 'grant-rows' })
  const loadGrants = async () => {
    const r = await api('GET', `/v1/datasets/${enc}/access`)
    if (r.status !== 200) { error.textContent = r.body?.detail ?? `status ${r.status}`; return }
    grants.replaceChildren(...r.body.grants.map((g) => h('tr', {}, h('td', {}, g.principal), h('td', {}, g.actions.join(', ')), h('td', {}, (g.devices ?? [g.principal]).join(', ')),
      h('td', {}, h('button', { type: 'button', class: 'secondary', 'aria-label': `Remove the grant of ${g.principal}`, onclick: async () => {
        const x = await api('DELETE', `/v1/datasets/${enc}/access/${encodeURIComponent(g.principal)}`)
        if (x.status !== 204) error.textContent = x.body?.detail ?? `status ${x.status}`
        loadGrants()
      } }, 'Remove')))))
  }
  const actions = ['publish', 'subscribe', 'query', 'manage']
  const grantForm = h('form', { 'aria-labelledby': 'grant-title' },
    h('h3', { id: 'grant-title' }, 'Grant access'),
    h('label', { for: 'g-principal' }, 'Principal'), h('input', { id: 'g-principal', required: true }),
    h('fieldset', {}, h('legend', {}, 'Actions'), actions.map((a) => h('label', { class: 'inline' }, h('input', { type: 'checkbox', value: a, name: 'g-action' }), ` ${a}`))),
    h('label', { for: 'g-devices' }, 'Devices (comma-separated; + for any; empty: its own id)'), h('input', { id: 'g-devices' }),
    h('button', { type: 'submit' }, 'Grant'))
  grantForm.addEventListener('submit', async (ev) => {
    ev.preventDefault()
    const chosen = [...grantForm.querySelectorAll('input[name="g-action"]:checked')].map((x) => x.value)
    const devices = $('#g-devices').value.split(',').map((x) => x.trim()).filter((x) => x !== '')
    const r = await api('POST', `/v1/datasets/${enc}/access`, { principal: $('#g-principal').value.trim(), actions: chosen, ...(devices.length > 0 ? { devices } : {}) })
    error.textContent = r.status < 300 ? '' : (r.body?.detail ?? `status ${r.status}`)
    loadGrants()
  })
  // Rejects
  const rejects = h('tbody', { id: 'reject-rows' })
  const rj = await api('GET', `/v1/datasets/${enc}/rejects?limit=50`)
  rejects.replaceChildren(...(rj.body?.rejects ?? []).map((x) => h('tr', {}, [x.at, x.device ?? '', x.reason, x.detail, x.excerpt].map((v) => h('td', {}, v)))))
  root.append(error,
    h('h3', {}, 'Schema'), h('label', { for: 'schema-edit' }, `Schema (version ${d.body.version}, JSON)`), schemaText, check, answer,
    h('h3', {}, 'Access'), h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, ['Principal', 'Actions', 'Devices', ''].map((t) => h('th', { scope: 'col' }, t)))), grants)), grantForm,
    h('h3', {}, 'Latest rejects'), h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, ['At', 'Device', 'Reason', 'Detail', 'Payload'].map((t) => h('th', { scope: 'col' }, t)))), rejects)))
  await loadGrants()
}

// ---- live tail: the dataset's records as they arrive, over MQTT over WebSocket

async function tail (root) {
  root.append(h('h2', {}, 'Live tail'))
  const r = await api('GET', '/v1/datasets?limit=200')
  const select = h('select', { id: 'tail-dataset' }, (r.body?.datasets ?? []).map((d) => h('option', { value: d.id }, d.id)))
  const status = h('p', { role: 'status', id: 'tail-status' }, 'Not connected')
  const rows = h('tbody', { id: 'tail-rows' })
  const start = h('button', { type: 'submit' }, 'Start')
  const form = h('form', {}, h('label', { for: 'tail-dataset' }, 'Dataset'), select, start)
  root.append(form, status, h('div', { class: 'scroll' }, h('table', { 'aria-label': 'Records as they arrive, newest first' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Arrived'), h('th', { scope: 'col' }, 'Device'), h('th', { scope: 'col' }, 'Record'))), rows)))
  let client = null
  const stop = () => { if (client !== null) { client.end(true); client = null } }
  stopPage = stop
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault()
    stop()
    rows.replaceChildren()
    const cfg = await (await fetch('config.json')).json()
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.hostname}:${cfg.ws.port}${cfg.ws.path}`
    const ds = select.value
    client = mqtt.connect(url, { username: session.principal, password: session.key, clientId: `console-${Math.random().toString(16).slice(2, 10)}`, reconnectPeriod: 0, protocolVersion: 4 })
    client.on('error', (err) => { status.textContent = `Refused: ${err.message}` })
    client.on('close', () => { if (client !== null) status.textContent = 'Disconnected' })
    client.on('connect', () => {
      client.subscribe(`datasets/${ds}/#`, { qos: 0 }, (err, granted) => {
        if (err || granted?.[0]?.qos === 128) { status.textContent = `Not allowed to subscribe to ${ds}`; return }
        status.textContent = `Watching ${ds}`
      })
    })
    client.on('message', (topic, payload) => {
      const device = topic.split('/')[2] ?? ''
      rows.prepend(h('tr', {}, h('td', {}, new Date().toISOString()), h('td', {}, device), h('td', {}, h('code', {}, payload.toString()))))
      while (rows.children.length > 200) rows.lastChild.remove()
    })
  })
}

// ---- query: the query language as a form, a line chart, a table, paging and CSV

function lineChart (points, label) {
  // points: [x (epoch ms), y][], drawn in a 600×200 box with the y range and the first and last times.
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg')
  svg.setAttribute('viewBox', '0 0 600 220')
  svg.setAttribute('role', 'img')
  svg.setAttribute('aria-label', label)
  svg.setAttribute('class', 'chart')
  if (points.length === 0) return svg
  const xs = points.map((p) => p[0])
  const ys = points.map((p) => p[1])
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)]
  const X = (x) => 50 + (x1 === x0 ? 0 : (x - x0) / (x1 - x0) * 540)
  const Y = (y) => 190 - (y1 === y0 ? 90 : (y - y0) / (y1 - y0) * 180)
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline')
  line.setAttribute('points', points.map((p) => `${X(p[0])},${Y(p[1])}`).join(' '))
  const text = (x, y, t, anchor = 'start') => {
    const el = document.createElementNS('http://www.w3.org/2000/svg', 'text')
    el.setAttribute('x', x); el.setAttribute('y', y); el.setAttribute('text-anchor', anchor); el.textContent = t
    return el
  }
  svg.append(line, text(45, 15, String(y1), 'end'), text(45, 195, String(y0), 'end'),
    text(50, 215, new Date(x0).toISOString().slice(11, 19)), text(590, 215, new Date(x1).toISOString().slice(11, 19), 'end'))
  return svg
}

function toCsv (rows) {
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))]
  const cell = (v) => v === null || v === undefined ? '' : /[",\n]/.test(String(v)) ? `"${String(v).replaceAll('"', '""')}"` : String(v)
  return [cols.join(','), ...rows.map((r) => cols.map((c) => cell(r[c])).join(','))].join('\n') + '\n'
}

async function query (root) {
  root.append(h('h2', {}, 'Query'))
  const list = await api('GET', '/v1/datasets?limit=200')
  const error = h('p', { class: 'error', role: 'alert', id: 'query-error' })
  const chart = h('div', { id: 'query-chart' })
  const rowsEl = h('div', { class: 'scroll', id: 'query-table' })
  const actions = h('div', {})
  const columnSelect = h('select', { id: 'q-agg-col' })
  const whereCol = h('select', { id: 'q-where-col' }, h('option', { value: '' }, '(no filter)'))
  const dsSelect = h('select', { id: 'q-dataset' }, (list.body?.datasets ?? []).map((d) => h('option', { value: d.id }, d.id)))
  const fillColumns = async () => {
    const d = await api('GET', `/v1/datasets/${encodeURIComponent(dsSelect.value)}`)
    const cols = d.status === 200 ? ['device', ...d.body.schema.tags, ...Object.keys(d.body.schema.fields)] : []
    columnSelect.replaceChildren(...cols.filter((c) => c !== 'device').map((c) => h('option', { value: c }, c)))
    whereCol.replaceChildren(h('option', { value: '' }, '(no filter)'), ...cols.map((c) => h('option', { value: c }, c)))
  }
  dsSelect.addEventListener('change', fillColumns)
  const form = h('form', { 'aria-label': 'Query' },
    h('label', { for: 'q-dataset' }, 'Dataset'), dsSelect,
    h('label', { for: 'q-from' }, 'From (UTC)'), h('input', { id: 'q-from', type: 'datetime-local', step: '1' }),
    h('label', { for: 'q-to' }, 'To (UTC)'), h('input', { id: 'q-to', type: 'datetime-local', step: '1' }),
    h('label', { for: 'q-where-col' }, 'Filter column'), whereCol,
    h('label', { for: 'q-where-op' }, 'Filter operator'), h('select', { id: 'q-where-op' }, ['=', '!=', '<', '<=', '>', '>='].map((o) => h('option', { value: o }, o))),
    h('label', { for: 'q-where-value' }, 'Filter value'), h('input', { id: 'q-where-value' }),
    h('label', { for: 'q-bucket' }, 'Bucket (e.g. 10s, 1m, 1h; empty: raw rows)'), h('input', { id: 'q-bucket', pattern: '[1-9][0-9]{0,5}[smhd]' }),
    h('label', { for: 'q-agg-col' }, 'Aggregate column'), columnSelect,
    h('label', { for: 'q-agg-fn' }, 'Aggregate'), h('select', { id: 'q-agg-fn' }, ['avg', 'min', 'max', 'sum', 'count', 'first', 'last'].map((f) => h('option', { value: f }, f))),
    h('label', { for: 'q-limit' }, 'Rows per page'), h('input', { id: 'q-limit', type: 'number', min: '1', value: '100' }),
    h('button', { type: 'submit' }, 'Run'))
  let all = []
  let body = null
  const run = async (cursor) => {
    error.textContent = ''
    const r = await api('POST', `/v1/datasets/${encodeURIComponent(dsSelect.value)}/query`, { ...body, ...(cursor ? { cursor } : {}) })
    if (r.status !== 200) { error.textContent = r.body?.detail ?? `status ${r.status}`; return }
    all = cursor ? all.concat(r.body.rows) : r.body.rows
    const cols = [...new Set(all.flatMap((x) => Object.keys(x)))]
    rowsEl.replaceChildren(h('table', { 'aria-label': 'Query result' },
      h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, all.map((x) => h('tr', {}, cols.map((c) => h('td', {}, x[c] ?? '')))))))
    const alias = body.aggregate ? `${Object.keys(body.aggregate)[0]}_${Object.values(body.aggregate)[0][0]}` : null
    const xKey = body.bucket ? 'bucket' : 'ts'
    const yKey = alias ?? (body.select?.[0]) ?? cols.find((c) => typeof all[0]?.[c] === 'number')
    chart.replaceChildren(yKey ? lineChart(all.filter((x) => typeof x[yKey] === 'number').map((x) => [Date.parse(x[xKey]), x[yKey]]).sort((a, b) => a[0] - b[0]), `${yKey} over ${xKey}`) : '')
    const next = r.body.nextCursor
    actions.replaceChildren(
      next ? h('button', { type: 'button', class: 'secondary', onclick: () => run(next) }, 'Next page') : '',
      h('button', { type: 'button', class: 'secondary', id: 'q-csv', onclick: () => {
        const a = h('a', { href: URL.createObjectURL(new Blob([toCsv(all)], { type: 'text/csv' })), download: `${dsSelect.value}.csv` })
        document.body.append(a); a.click(); a.remove()
      } }, 'Export CSV'),
      h('span', { role: 'status', id: 'q-count' }, ` ${all.length} rows`))
  }
  form.addEventListener('submit', (ev) => {
    ev.preventDefault()
    const iso = (v) => v === '' ? undefined : new Date(v + 'Z').toISOString()
    const bucket = $('#q-bucket').value.trim()
    const wv = $('#q-where-value').value
    body = {
      ...(iso($('#q-from').value) ? { from: iso($('#q-from').value) } : {}),
      ...(iso($('#q-to').value) ? { to: iso($('#q-to').value) } : {}),
      ...(whereCol.value !== '' ? { where: [{ column: whereCol.value, op: $('#q-where-op').value, value: wv !== '' && !Number.isNaN(Number(wv)) ? Number(wv) : wv }] } : {}),
      ...(bucket !== '' ? { bucket, aggregate: { [columnSelect.value]: [$('#q-agg-fn').value] } } : {}),
      limit: Number($('#q-limit').value) || 100
    }
    run(null)
  })
  root.append(form, error, chart, actions, rowsEl)
  await fillColumns()
}

// ---- principals and keys: create, issue a key (shown once), revoke

async function principals (root) {
  root.append(h('h2', {}, 'Principals and keys'))
  const error = h('p', { class: 'error', role: 'alert' })
  const list = h('div', { class: 'scroll' })
  const issued = h('div', { role: 'status', id: 'issued' })
  const keysOf = async (id, cell) => {
    const r = await api('GET', `/v1/principals/${encodeURIComponent(id)}/keys`)
    cell.replaceChildren(...(r.body?.keys ?? []).map((k) => h('div', {},
      `${k.id}${k.description ? ` (${k.description})` : ''}: `, k.revokedAt !== null ? `revoked ${k.revokedAt}` : k.expiresAt !== null ? `expires ${k.expiresAt}` : 'active', ' ',
      k.revokedAt === null ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Revoke ${k.id} of ${id}`, onclick: async () => {
        const r2 = await api('DELETE', `/v1/principals/${encodeURIComponent(id)}/keys/${encodeURIComponent(k.id)}`)
        if (r2.status !== 204) error.textContent = r2.body?.detail ?? `status ${r2.status}`
        await keysOf(id, cell)
      } }, 'Revoke') : '')))
  }
  const load = async () => {
    const r = await api('GET', '/v1/principals?limit=200')
    if (r.status !== 200) { error.textContent = r.body?.detail ?? `status ${r.status}`; return }
    const rows = r.body.principals.map((p) => {
      const keys = h('td', {})
      keysOf(p.id, keys)
      return h('tr', {}, h('td', {}, p.id), h('td', {}, p.kind), h('td', {}, p.disabled ? 'disabled' : 'enabled'), keys,
        h('td', {}, h('button', { type: 'button', 'aria-label': `Issue a key for ${p.id}`, onclick: async () => {
          const k = await api('POST', `/v1/principals/${encodeURIComponent(p.id)}/keys`, { description: 'issued from the console' })
          if (k.status !== 201) { error.textContent = k.body?.detail ?? `status ${k.status}`; return }
          // Shown once: the gateway keeps only its hash.
          const value = h('code', { id: 'new-key' }, k.body.key)
          issued.replaceChildren(h('p', {}, `New key ${k.body.id} for ${p.id}. Copy it now: it is not shown again.`), value, ' ',
            h('button', { type: 'button', class: 'secondary', onclick: async () => { await navigator.clipboard.writeText(k.body.key).catch(() => {}); issued.querySelector('.copied').textContent = 'Copied' } }, 'Copy'),
            h('span', { class: 'copied ok', 'aria-live': 'polite' }))
          await keysOf(p.id, keys)
        } }, 'Issue key')))
    })
    list.replaceChildren(h('table', {},
      h('thead', {}, h('tr', {}, ['Id', 'Kind', 'State', 'Keys', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows)))
  }
  const form = h('form', { 'aria-labelledby': 'principal-create' },
    h('h3', { id: 'principal-create' }, 'Create a principal'),
    h('label', { for: 'p-id' }, 'Principal id'), h('input', { id: 'p-id', required: true }),
    h('label', { for: 'p-kind' }, 'Kind'), h('select', { id: 'p-kind' }, ['device', 'service', 'admin'].map((k) => h('option', { value: k }, k))),
    h('button', { type: 'submit' }, 'Create principal'),
    h('p', { role: 'status', id: 'principal-result' }))
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault()
    const out = $('#principal-result')
    const r = await api('POST', '/v1/principals', { id: $('#p-id').value.trim(), kind: $('#p-kind').value })
    out.className = r.status === 201 ? 'ok' : 'error'
    out.textContent = r.status === 201 ? `Created ${r.body.id}` : (r.body?.detail ?? `status ${r.status}`)
    if (r.status === 201) load()
  })
  root.append(error, issued, list, form)
  await load()
}

// ---- audit: the log with filters, and the chain's verification

async function audit (root) {
  root.append(h('h2', {}, 'Audit log'))
  const verify = h('p', { role: 'status', id: 'audit-verify' }, 'Verifying the chain…')
  const rows = h('tbody', { id: 'audit-rows' })
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Older entries')
  let cursor = null
  const filters = h('form', { 'aria-label': 'Filters' },
    h('label', { for: 'f-actor' }, 'Actor'), h('input', { id: 'f-actor' }),
    h('label', { for: 'f-action' }, 'Action (e.g. key.revoke)'), h('input', { id: 'f-action' }),
    h('label', { for: 'f-outcome' }, 'Outcome'), h('select', { id: 'f-outcome' }, h('option', { value: '' }, 'any'), h('option', { value: 'ok' }, 'ok'), h('option', { value: 'denied' }, 'denied')),
    h('button', { type: 'submit' }, 'Filter'))
  const load = async (append) => {
    const q = new URLSearchParams({ limit: '50' })
    for (const [k, id] of [['actor', '#f-actor'], ['action', '#f-action'], ['outcome', '#f-outcome']]) if ($(id).value !== '') q.set(k, $(id).value)
    if (append && cursor !== null) q.set('cursor', cursor)
    const r = await api('GET', `/v1/audit?${q}`)
    if (r.status !== 200) { verify.textContent = r.body?.detail ?? `status ${r.status}`; return }
    if (!append) rows.replaceChildren()
    for (const e of r.body.entries) rows.append(h('tr', {}, [e.seq, e.at, e.actor ?? '', e.action, e.resource, e.outcome, e.detail ?? ''].map((v) => h('td', {}, v))))
    cursor = r.body.next
    more.hidden = cursor === null
  }
  filters.addEventListener('submit', (ev) => { ev.preventDefault(); load(false) })
  more.addEventListener('click', () => load(true))
  root.append(verify, filters, h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, ['Seq', 'At', 'Actor', 'Action', 'Resource', 'Outcome', 'Detail'].map((t) => h('th', { scope: 'col' }, t)))), rows)), more)
  await load(false)
  const v = await api('GET', '/v1/audit/verify')
  verify.className = v.body?.ok ? 'ok' : 'error'
  verify.textContent = v.status !== 200 ? (v.body?.detail ?? `status ${v.status}`)
    : v.body.ok ? `Chain verified: ${v.body.checked} entries, intact` : `Chain broken at entry ${v.body.firstBroken.seq}: ${v.body.firstBroken.reason}`
}

// ---- sign in, and the hash router

async function signedIn () {
  $('#signin').hidden = true
  $('#nav').hidden = false
  $('#page').hidden = false
  show(location.hash.replace(/^#\//, '') || 'overview')
}

$('#signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault()
  session.set($('#principal').value.trim(), $('#key').value)
  const r = await api('GET', '/v1/datasets?limit=1')
  if (r.status !== 200) {
    session.clear()
    $('#signin-error').textContent = r.body?.detail ?? `Sign-in failed (${r.status})`
    return
  }
  $('#key').value = ''
  $('#signin-error').textContent = ''
  signedIn()
})
$('#signout').addEventListener('click', () => { stopPage(); session.clear(); location.hash = ''; location.reload() })
addEventListener('hashchange', () => { if (session.key !== null) show(location.hash.replace(/^#\//, '')) })
if (session.key !== null) signedIn()
