
(function () {
  'use strict';
  var T0 = performance.now();
  function readJSON(id) { var el = document.getElementById(id); return el ? JSON.parse(el.textContent) : null; }
  var D = readJSON('report-data');
  var P = readJSON('points-data');
  var M = D.manifest || {};
  var themeById = {};
  (D.themes || []).forEach(function (t) { themeById[t.theme] = t; });

  // DOM from text only: h('td', {class: 'num'}, ['12']) - strings become text nodes
  function h(tag, attrs, kids) {
    var el = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (attrs[k] === null || attrs[k] === undefined || attrs[k] === false) return;
      if (k === 'text') el.textContent = attrs[k];
      else if (k === 'class') el.className = attrs[k];
      else el.setAttribute(k, attrs[k]);
    });
    (kids || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    });
    return el;
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function fmt(v, d) {
    if (v === null || v === undefined || v === '') return '';
    if (typeof v === 'number') return d === undefined && Number.isInteger(v) ? v.toLocaleString('en-US') : v.toFixed(d === undefined ? 3 : d);
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }
  // plotly's labels read a little HTML: entities keep user text as text
  function plotlyText(s) { return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
  function color(t) {
    if (t === null || t === undefined || t < 0) return '#9aa0aa';
    return 'hsl(' + ((t * 137.508) % 360).toFixed(1) + ',' + (t % 3 === 1 ? 55 : 68) + '%,' + (t % 2 ? 40 : 50) + '%)';
  }
  function swatch(t) { var s = h('span', {class: 'swatch'}); s.style.background = color(t); return s; }
  function themeName(t) {
    if (t === null || t === undefined || t < 0) return 'no theme';
    var th = themeById[t];
    return '#' + t + (th && th.label ? ' ' + th.label : '');
  }
  function docBlock(d, role) {
    var kids = [];
    if (role) kids.push(h('span', {class: 'dup-role', text: role}));
    kids.push(h('span', {class: 'doc-id', text: d.id}));
    if (d.source) kids.push(h('span', {class: 'source', text: d.source}));
    if (d.theme !== undefined && d.theme !== null) kids.push(h('span', {class: 'source', text: 'theme ' + themeName(d.theme)}));
    var div = h('div', null, kids);
    var ex = d.missing ? '(not in documents.parquet)' : (d.excerpt !== undefined ? d.excerpt : (D.meta.texts ? '' : '(text unavailable)'));
    return [div, h('div', {class: 'excerpt', text: ex})];
  }
  function guard(name, fn) {
    try { return fn(); } catch (e) { console.error('report: ' + name + ' failed: ' + (e && e.stack || e)); }
  }

  // ---------------------------------------------------------------- header
  function buildSummary() {
    var docs = M.documents || {};
    var parts = [];
    if (docs.input !== undefined) parts.push(fmt(docs.input) + ' documents read');
    if (docs.kept !== undefined) parts.push(fmt(docs.kept) + ' kept');
    var nt = M.themes !== undefined ? M.themes : (D.themes || []).length;
    parts.push(fmt(nt) + ' themes' + (M.k !== undefined ? ' (k=' + M.k + ')' : ''));
    parts.push(fmt(D.duplicates.pairs) + ' documents not kept as duplicates of ' + fmt(D.duplicates.groups_total) + ' kept ones');
    parts.push('generated ' + D.meta.generated);
    document.getElementById('summary').textContent = parts.join(' \u00b7 ');
  }

  // ---------------------------------------------------------------- themes table
  function buildThemes() {
    var table = document.getElementById('themes-table');
    var tbody = table.tBodies[0];
    var rows = (D.themes || []).map(function (t) {
      var kw = h('ul', {class: 'keywords'});
      (t.keywords || []).forEach(function (k, i) {
        var li = h('li', {class: 'keyword'}, [h('span', {class: 'kw', text: k})]);
        var sc = (t.keyword_scores || [])[i];
        if (sc !== undefined && sc !== null) li.appendChild(h('span', {class: 'score', title: 'c-TF-IDF score', text: fmt(sc, 3)}));
        var lf = (t.keyword_lifts || [])[i];
        if (lf !== undefined && lf !== null) li.appendChild(h('span', {class: 'lift', title: 'lift: P(theme | term) / P(theme)', text: '\u00d7' + fmt(lf, 1)}));
        kw.appendChild(li);
      });
      var reps = h('ol', {class: 'reps'});
      (t.representatives || []).forEach(function (d) { reps.appendChild(h('li', null, docBlock(d))); });
      var more = (t.representatives_total || 0) - (t.representatives || []).length;
      if (more > 0) reps.appendChild(h('li', {class: 'note', text: '\u2026 ' + more + ' more in themes.json'}));
      var size = [fmt(t.size)];
      if (t.unique_size !== undefined && t.unique_size !== t.size) size.push(h('div', {class: 'note', text: fmt(t.unique_size) + ' unique'}));
      var merged = (t.merged_from && t.merged_from.length > 1) ? h('div', {class: 'note', text: 'merged from ' + t.merged_from.join(', ')}) : null;
      var tr = h('tr', {class: 'theme-row', 'data-theme': t.theme}, [
        h('td', {class: 'num'}, [swatch(t.theme), String(t.theme)]),
        h('td', {class: 'num'}, size),
        h('td', {class: 'theme-label'}, [t.label || '', merged]),
        h('td', null, [kw]),
        h('td', null, [reps])
      ]);
      tr._sort = {theme: t.theme, size: t.size || 0, label: (t.label || '').toLowerCase(), keywords: (t.keywords || []).join(' ').toLowerCase(),
                  reps: (t.representatives || []).map(function (d) { return d.id; }).join(' ')};
      tr._text = tr.textContent.toLowerCase();
      return tr;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
    var count = document.getElementById('theme-count');
    function showCount() {
      var shown = rows.filter(function (r) { return !r.hidden; }).length;
      count.textContent = shown === rows.length ? rows.length + ' themes' : shown + ' of ' + rows.length + ' themes';
    }
    showCount();
    var filter = document.getElementById('theme-filter');
    filter.addEventListener('input', function () {
      var q = filter.value.trim().toLowerCase();
      rows.forEach(function (r) { r.hidden = q !== '' && r._text.indexOf(q) < 0; });
      showCount();
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener('click', function () {
        var key = th.getAttribute('data-key'), num = th.getAttribute('data-type') === 'num';
        var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
        Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) { o.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
        rows.sort(function (a, b) {
          var x = a._sort[key], y = b._sort[key];
          var c = num ? x - y : (x < y ? -1 : x > y ? 1 : 0);
          return c * dir || a._sort.theme - b._sort.theme;
        });
        rows.forEach(function (r) { tbody.appendChild(r); });
      });
    });
  }

  // ---------------------------------------------------------------- hierarchy
  function buildHierarchy() {
    var root = document.getElementById('hierarchy');
    var note = document.getElementById('hierarchy-note');
    var nodes = D.hierarchy || [];
    if (!nodes.length) { note.textContent = 'No theme hierarchy in this run.'; return; }
    var byId = {}, child = {};
    nodes.forEach(function (n) { byId[n.id] = n; (n.children || []).forEach(function (c) { child[c] = true; }); });
    note.textContent = nodes.length + ' merges of ' + (D.themes || []).length + ' themes: each node joins two groups of themes at the cosine similarity of their mean centroids.';
    function leaf(t) {
      var th = themeById[t];
      return h('div', {class: 'leaf', 'data-theme': t}, [swatch(t), h('span', {class: 'leaf-label', text: themeName(t)}),
        h('span', {class: 'leaf-meta', text: th ? fmt(th.size) + ' docs' : ''})]);
    }
    function render(id, depth) {
      var n = byId[id];
      if (!n) return leaf(id);
      var det = h('details', {class: 'node', 'data-node': id, open: depth < 2 ? 'open' : null}, [
        h('summary', null, [h('span', {class: 'node-label', text: n.label || ('node ' + id)}),
          h('span', {class: 'node-meta', text: 'similarity ' + fmt(n.similarity, 3) + ' \u00b7 ' + fmt(n.size) + ' docs \u00b7 ' + (n.themes || []).length + ' themes'})])
      ]);
      (n.children || []).forEach(function (c) { det.appendChild(render(c, depth + 1)); });
      return det;
    }
    var tops = nodes.filter(function (n) { return !child[n.id]; }).reverse();  // the root is the last node
    tops.forEach(function (n) { root.appendChild(render(n.id, 0)); });
    (D.themes || []).forEach(function (t) { if (!child[t.theme]) root.appendChild(leaf(t.theme)); });
  }

  // ---------------------------------------------------------------- duplicates
  function buildDuplicates() {
    var dd = D.duplicates, box = document.getElementById('duplicates');
    var note = document.getElementById('duplicates-note');
    if (!dd.available) { note.textContent = 'No duplicates.parquet in this run.'; return; }
    var kinds = Object.keys(dd.kinds || {}).map(function (k) { return fmt(dd.kinds[k]) + ' ' + k; }).join(', ');
    // documents (rows of duplicates.parquet, exact copies with them) by the kept document they repeat; the
    // CLI's summary counts the pairs of evidence between embedded texts, which link more documents than this
    var msg = fmt(dd.pairs) + ' documents not kept' + (kinds ? ' (' + kinds + ')' : '') + ', as duplicates of ' + fmt(dd.groups_total) + ' kept documents';
    if (dd.groups_total > dd.groups.length) msg += '; showing the ' + dd.groups.length + ' largest groups';
    msg += '; up to ' + dd.max_members + ' duplicates each, the most similar first.';
    if (M.dedup && M.dedup.threshold !== undefined) msg += ' Near duplicates: cosine \u2265 ' + M.dedup.threshold + '.';
    note.textContent = msg;
    dd.groups.forEach(function (g) {
      var grp = h('div', {class: 'dup-group', 'data-kept': g.kept.id});
      var kept = h('div', {class: 'dup-kept'}, docBlock(g.kept, 'kept'));
      kept.style.gridRow = 'span ' + Math.max(1, g.members.length + (g.size > g.members.length ? 1 : 0));
      grp.appendChild(kept);
      g.members.forEach(function (m) {
        var ev = [m.kind || 'duplicate'];
        if (m.similarity !== null && m.similarity !== undefined) ev.push('cosine ' + fmt(m.similarity, 3));
        if (m.lexical_similarity !== null && m.lexical_similarity !== undefined) ev.push('word Jaccard ' + fmt(m.lexical_similarity, 3));
        if (m.edits !== null && m.edits !== undefined) ev.push(m.edits + ' word edit' + (m.edits === 1 ? '' : 's'));
        if (m.kind === 'fuzzy' && m.text_jaccard !== null && m.text_jaccard !== undefined) ev.push('whole-text Jaccard ' + fmt(m.text_jaccard, 3));
        var b = docBlock(m, 'duplicate');
        grp.appendChild(h('div', {class: 'dup-member', 'data-kind': m.kind || ''}, [b[0], h('div', {class: 'evidence', text: ev.join(' \u00b7 ')}), b[1]]));
      });
      if (g.size > g.members.length) grp.appendChild(h('div', {class: 'more', text: '\u2026 ' + (g.size - g.members.length) + ' more in duplicates.parquet'}));
      box.appendChild(grp);
    });
  }

  // ---------------------------------------------------------------- the run
  function kvRows(tbody, pairs) {
    pairs.forEach(function (p) { if (p[1] !== undefined) tbody.appendChild(h('tr', {'data-key': p[0]}, [h('td', {text: p[0]}), h('td', {class: 'num', text: fmt(p[1])})])); });
  }
  function buildRun() {
    var st = document.getElementById('stages').tBodies[0], total = 0;
    Object.keys(M.stages || {}).forEach(function (name) {
      var s = M.stages[name] || {};
      if (!s.reused && typeof s.seconds === 'number') total += s.seconds;
      st.appendChild(h('tr', {'data-stage': name}, [h('td', {text: name}), h('td', {class: 'num', text: typeof s.seconds === 'number' ? s.seconds.toFixed(2) : ''}),
        h('td', {text: s.device || ''}), h('td', {text: s.reused ? 'reused' : ''})]));
    });
    if (st.rows.length) st.appendChild(h('tr', null, [h('th', {text: 'total (not reused)'}), h('th', {class: 'num', text: total.toFixed(2)}), h('th'), h('th')]));
    else st.appendChild(h('tr', null, [h('td', {colspan: 4, class: 'note', text: 'No stages recorded.'})]));
    var d = M.documents || {};
    kvRows(document.getElementById('counts').tBodies[0], [['read', d.input], ['kept', d.kept], ['embedded', d.embedded], ['near duplicates', d.near_duplicates],
      ['exact duplicates', d.exact_duplicates], ['filtered', d.filtered], ['bad records', d.bad_records], ['on the map', D.meta.points_total]]);
    var dd = document.getElementById('dedup').tBodies[0];
    Object.keys(M.dedup || {}).forEach(function (k) { kvRows(dd, [[k, M.dedup[k]]]); });
    // bad records
    var bad = M.bad_records || {}, ex = bad.examples || [];
    var bt = document.getElementById('bad-records').tBodies[0];
    ex.forEach(function (b) { bt.appendChild(h('tr', null, [h('td', {class: 'doc-id', text: b.source || ''}), h('td', {text: b.error || ''})])); });
    var bn = document.getElementById('bad-note');
    var count = bad.count !== undefined ? bad.count : ex.length;
    bn.textContent = count ? fmt(count) + ' bad records skipped' + (ex.length < count ? '; the first ' + ex.length + ' listed' : '') + '.' : 'No bad records.';
    if (!ex.length) document.getElementById('bad-records').hidden = true;
    if (M.config !== undefined) document.getElementById('config-json').textContent = JSON.stringify(M.config, null, 2);
    else document.getElementById('config').hidden = true;
  }
  function buildK() {
    var sk = M.select_k || {}, note = document.getElementById('k-note'), div = document.getElementById('k-chart');
    var chosen = sk.k !== undefined ? sk.k : M.k;
    var bits = [];
    if (chosen !== undefined) bits.push('k = ' + chosen);
    if (sk.criterion) bits.push('criterion: ' + sk.criterion);
    if (sk.range) bits.push('range: ' + fmt(sk.range));
    if (sk.reason) bits.push(sk.reason);
    var cands = (sk.candidates || []).filter(function (c) { return typeof c.k === 'number'; });
    if (!cands.length) { note.textContent = (bits.join(' \u00b7 ') || 'No choice of k recorded') + (bits.length ? '' : '.'); div.hidden = true; return null; }
    note.textContent = bits.join(' \u00b7 ');
    var key = ['modularities', 'silhouettes', 'scores'].filter(function (k) { return cands.some(function (c) { return Array.isArray(c[k]) && c[k].length; }); })[0];
    var single = ['modularity', 'silhouette', 'score'].filter(function (k) { return cands.some(function (c) { return typeof c[k] === 'number'; }); })[0];
    var name = key ? key.replace(/ies$/, 'y').replace(/s$/, '') : (single || 'score');
    cands = cands.slice().sort(function (a, b) { return a.k - b.k; });
    var ks = [], mean = [], lo = [], hi = [];
    cands.forEach(function (c) {
      var v = key && Array.isArray(c[key]) && c[key].length ? c[key] : (typeof c[single] === 'number' ? [c[single]] : []);
      if (!v.length) return;
      var m = v.reduce(function (a, b) { return a + b; }, 0) / v.length;
      ks.push(c.k); mean.push(m); lo.push(m - Math.min.apply(null, v)); hi.push(Math.max.apply(null, v) - m);
    });
    var traces = [{type: 'scatter', mode: 'lines+markers', name: 'mean ' + name + ' (min\u2013max over draws)', x: ks, y: mean,
      error_y: {type: 'data', symmetric: false, array: hi, arrayminus: lo, thickness: 1, width: 4}, line: {color: '#2f5fb3'}, marker: {size: 6}}];
    var shapes = [];
    var ci = ks.indexOf(chosen);
    if (ci >= 0) {
      traces.push({type: 'scatter', mode: 'markers', name: 'chosen k = ' + chosen, x: [chosen], y: [mean[ci]], marker: {size: 15, symbol: 'star', color: '#d1495b'}});
      shapes.push({type: 'line', xref: 'x', yref: 'paper', x0: chosen, x1: chosen, y0: 0, y1: 1, line: {color: '#d1495b', dash: 'dot', width: 1}});
    }
    var logx = ks.length > 2 && ks[ks.length - 1] / Math.max(1, ks[0]) > 8;
    return Plotly.newPlot(div, traces, {margin: {l: 60, r: 20, t: 10, b: 45}, shapes: shapes, showlegend: true, legend: {orientation: 'h', y: 1.12},
      xaxis: {title: {text: 'k'}, type: logx ? 'log' : 'linear'}, yaxis: {title: {text: name}}}, {displaylogo: false, responsive: true});
  }

  // ---------------------------------------------------------------- map
  function hasWebGL() {
    try { var c = document.createElement('canvas'); return !!(c.getContext('webgl') || c.getContext('experimental-webgl')); } catch (e) { return false; }
  }
  function buildMap() {
    var note = document.getElementById('sample-note');
    var tn = document.getElementById('texts-note');
    if (D.meta.texts_note) { tn.textContent = D.meta.texts_note.charAt(0).toUpperCase() + D.meta.texts_note.slice(1) + ': the map and lists show ids only.'; tn.hidden = false; }
    var div = document.getElementById('map');
    var n = P.x.length;
    if (!n) {
      note.textContent = D.meta.has_coordinates ? 'No document has map coordinates.' : 'This run has no map coordinates (documents.parquet has no x, y).';
      div.style.height = 'auto'; document.getElementById('hover-panel').hidden = true;
      return null;
    }
    var m = D.meta;
    var msg = m.sampled ? 'Showing ' + fmt(m.points_shown) + ' of ' + fmt(m.points_total) + ' documents, seeded sample (seed ' + m.seed + '), every theme in it.'
                        : 'Showing all ' + fmt(m.points_total) + ' documents with map coordinates.';
    var missing = m.documents - m.points_total;
    if (missing > 0) msg += ' ' + fmt(missing) + (missing === 1 ? ' document has' : ' documents have') + ' no coordinates (filtered, or not embedded).';
    if (m.excerpt_chars_map < m.excerpt_chars) msg += ' Excerpts shortened to ' + m.excerpt_chars_map + ' characters to keep the page small.';
    var gl = hasWebGL();
    if (!gl) msg += ' WebGL is unavailable: drawing with SVG (slower).';
    note.textContent = msg;
    var groups = {};
    for (var i = 0; i < n; i++) { var t = P.theme[i]; (groups[t] = groups[t] || []).push(i); }
    var keys = Object.keys(groups).map(Number).sort(function (a, b) { return (a < 0) - (b < 0) || a - b; });
    var size = n > 30000 ? 3 : n > 5000 ? 4 : 6;
    var traces = keys.map(function (t) {
      var idx = groups[t], th = themeById[t];
      var name = t < 0 ? 'no theme' : '#' + t + ' ' + (th && th.label ? th.label : '');
      if (name.length > 40) name = name.slice(0, 39) + '\u2026';
      return {type: gl ? 'scattergl' : 'scatter', mode: 'markers', name: plotlyText(name), hoverinfo: 'none',
        x: idx.map(function (j) { return P.x[j]; }), y: idx.map(function (j) { return P.y[j]; }), customdata: idx,
        marker: {size: size, color: color(t), opacity: 0.75}};
    });
    var nl = Object.keys(D.label_pos || {}).length;
    var annotations = Object.keys(D.label_pos || {}).map(function (k) {
      var th = themeById[k], p = D.label_pos[k];
      var label = th && th.label ? th.label : '#' + k;
      return {x: p[0], y: p[1], text: plotlyText(label), showarrow: false, font: {size: nl > 30 ? 10 : nl > 12 ? 11 : 12, color: '#111'},
        bgcolor: 'rgba(255,255,255,0.78)', bordercolor: color(Number(k)), borderwidth: 1, borderpad: 2};
    });
    var layout = {margin: {l: 10, r: 10, t: 34, b: 10}, hovermode: 'closest', dragmode: 'zoom', annotations: annotations,
      xaxis: {showgrid: false, zeroline: false, showticklabels: false}, yaxis: {showgrid: false, zeroline: false, showticklabels: false},
      legend: {itemsizing: 'constant', font: {size: 11}, y: 0.95, yanchor: 'top'}, showlegend: keys.length <= 60, plot_bgcolor: '#fff', paper_bgcolor: '#fff'};
    var tip = document.getElementById('hover-tip');
    var panel = document.getElementById('hover-text');
    function show(j, ev) {
      var t = P.theme[j], st = P.statuses[P.status[j]], dup = P.dup_of[j];
      var status = 'status: ' + st + (dup ? ', duplicate of ' + dup : '');
      var ex = P.excerpt[j] || (D.meta.texts ? '' : '(text unavailable)');
      clear(panel);
      panel.appendChild(h('div', {class: 'hover-id', text: P.id[j]}));
      panel.appendChild(h('div', {class: 'hover-theme'}, [swatch(t), themeName(t)]));
      panel.appendChild(h('div', {class: 'hover-status', text: status}));
      panel.appendChild(h('div', {class: 'hover-excerpt', text: ex}));
      clear(tip);
      tip.appendChild(h('div', {class: 'tip-id', text: P.id[j]}));
      tip.appendChild(h('div', null, [swatch(t), themeName(t)]));
      tip.appendChild(h('div', {class: 'note', text: status}));
      tip.appendChild(h('div', {text: ex.length > 160 ? ex.slice(0, 159) + '\u2026' : ex}));
      var e = ev && ev.event;
      if (e && typeof e.clientX === 'number') {
        tip.hidden = false;
        var x = e.clientX + 14, y = e.clientY + 14;
        var w = tip.offsetWidth, hh = tip.offsetHeight;
        var right = Math.min(window.innerWidth, document.getElementById('hover-panel').getBoundingClientRect().left);
        if (x + w > right - 4) x = e.clientX - w - 14;  // left of the cursor: the side panel stays readable
        if (y + hh > window.innerHeight - 4) y = e.clientY - hh - 14;
        tip.style.left = Math.max(4, x) + 'px'; tip.style.top = Math.max(4, y) + 'px';
      } else tip.hidden = true;
    }
    return Plotly.newPlot(div, traces, layout, {responsive: true, displaylogo: false, scrollZoom: true}).then(function (gd) {
      gd.on('plotly_hover', function (ev) { var p = ev && ev.points && ev.points[0]; if (p) show(p.customdata !== undefined ? p.customdata : gd.data[p.curveNumber].customdata[p.pointNumber], ev); });
      gd.on('plotly_unhover', function () { tip.hidden = true; });
      gd.on('plotly_relayout', function () { tip.hidden = true; });
      return gd;
    });
  }

  guard('summary', buildSummary);
  guard('run', buildRun);
  guard('themes', buildThemes);
  guard('hierarchy', buildHierarchy);
  guard('duplicates', buildDuplicates);
  var plots = [guard('map', buildMap), guard('k chart', buildK)].filter(Boolean);
  window.themeReport = {data: D, points: P, parsedMs: T0};
  Promise.all(plots).then(function () {
    window.themeReport.readyMs = performance.now();
    document.documentElement.setAttribute('data-ready', '1');
  }, function (e) { console.error('report: plotting failed: ' + (e && e.stack || e)); });
})();
