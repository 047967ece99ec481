/* ttx report: the problem explorer. The index (one entry per problem) is parsed at load; the
   details (questions, records, traces) only when a problem is opened or the text is searched.
   The list is virtual: only the rows in view exist in the DOM. */
(function () {
  "use strict";
  var $ = function (s, el) { return (el || document).querySelector(s); };
  var $$ = function (s, el) { return Array.prototype.slice.call((el || document).querySelectorAll(s)); };
  var ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  /* bidirectional controls shown as <U+202E>, never applied (ttx/viewer/safe.py, the same set) */
  var BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
  function visible(s) {
    return String(s).replace(BIDI, function (c) {
      return "<U+" + ("000" + c.charCodeAt(0).toString(16).toUpperCase()).slice(-4) + ">";
    });
  }
  function esc(s) { return visible(s).replace(/[&<>"']/g, function (c) { return ESC[c]; }); }
  /* a fragment typed or pasted by hand may be malformed (%E0%A4%A): taken as it is */
  function decodeHash(h) { try { return decodeURIComponent(h); } catch (e) { return h; } }
  function encodeHash(s) { try { return encodeURIComponent(s); } catch (e) { return ""; } }
  function own(obj, key) { return Object.prototype.hasOwnProperty.call(obj, key); }

  var INDEX = JSON.parse($("#ttx-index").textContent);
  var RUNS = INDEX.runs, PROBS = INDEX.problems, CLASSES = INDEX.classes;
  var DETAIL = null;
  function loading() { return document.readyState === "loading"; }   // the details still arriving
  function whenLoaded(fn) {
    if (loading()) document.addEventListener("DOMContentLoaded", fn, { once: true });
    else fn();
  }
  function detail() {
    if (!DETAIL) DETAIL = JSON.parse($("#ttx-detail").textContent);
    return DETAIL;
  }
  var LABEL = { always_correct: "always correct", always_wrong: "always wrong",
                improved: "improved", degraded: "degraded", mixed: "mixed" };
  var SHORT = { always_correct: "✓", always_wrong: "✗", improved: "↑", degraded: "↓", mixed: "~" };
  var STATUS = ["root", "expanded", "complete", "pruned"];
  var ROW = 46;                                   // list row height, px (matches the CSS)
  var byId = Object.create(null);                 // ids are data: "__proto__" is just an id
  PROBS.forEach(function (p, i) { byId[p.id] = i; });

  var state = { run: 0, cls: "", ok: "", dis: false, q: "" };
  var view = [], sel = -1, tab = "overview", hay = [];

  function num(x, d) {
    if (x === null || x === undefined) return "–";
    if (typeof x !== "number") return esc(x);
    if (Number.isInteger(x)) return x.toLocaleString("en-US");
    return x.toFixed(d === undefined ? 3 : d);
  }
  function mark(ok) { return ok ? '<span class="ok">✓</span>' : '<span class="bad">✗</span>'; }
  function swatch(j) { return '<i class="sw" style="background:' + RUNS[j].color + '"></i>'; }
  function short(v) {
    var s = typeof v === "string" ? v : JSON.stringify(v);
    return s === undefined ? "" : s;
  }

  /* ---------- tabs and routing ---------- */
  function show(name) {
    tab = name;
    ["overview", "problems", "manifest"].forEach(function (t) {
      $("#tab-" + t).hidden = t !== name;
    });
    $$("nav a").forEach(function (a) { a.classList.toggle("active", a.dataset.tab === name); });
    if (name === "problems") { renderList(); if (sel < 0 && view.length) select(0, true); }
  }
  function route() {
    var h = decodeHash(location.hash.slice(1));
    if (h.indexOf("problem/") === 0) {
      var i = byId[h.slice(8)];
      show("problems");
      if (i !== undefined) {
        var k = view.indexOf(i);
        if (k < 0) { resetFilters(); k = view.indexOf(i); }
        select(k, true);
      }
    } else if (h === "problems" || h === "manifest") {
      show(h);
    } else {
      show("overview");
    }
  }

  /* ---------- filters ---------- */
  function haystack(i) {
    if (hay[i] === undefined) {
      var d = detail().problems[i], parts = [d.q || "", d.gold || ""];
      d.runs.forEach(function (rr) {
        if (!rr) return;
        rr.recs.forEach(function (r) {
          parts.push(r.pred || "");
          r.traces.forEach(function (t) { parts.push(t.text || "", t.pred || ""); });
        });
      });
      hay[i] = parts.join("\n").toLowerCase();
    }
    return hay[i];
  }
  function matches(i) {
    var p = PROBS[i], r = state.run;
    if (state.cls && p.c[r] !== state.cls) return false;
    if (state.ok) {
      var f = p.f[r];
      if (f === null || f === undefined) return false;
      if (state.ok === "right" && f < 1 - 1e-9) return false;
      if (state.ok === "wrong" && f > 1e-9) return false;
      if (state.ok === "partly" && (f <= 1e-9 || f >= 1 - 1e-9)) return false;
    }
    if (state.dis) {
      var fs = p.f.filter(function (x) { return x !== null && x !== undefined; });
      if (fs.length < 2 || fs.every(function (x) { return x === fs[0]; })) return false;
    }
    if (state.q) {
      if (p.id.toLowerCase().indexOf(state.q) < 0 && haystack(i).indexOf(state.q) < 0) return false;
    }
    return true;
  }
  function applyFilters(keep) {
    if (state.q && loading()) {                   // text search needs the details
      $("#count").textContent = "reading the data…";
      whenLoaded(function () { applyFilters(keep); });
      return;
    }
    var current = sel >= 0 ? view[sel] : -1;
    view = [];
    for (var i = 0; i < PROBS.length; i++) if (matches(i)) view.push(i);
    $("#count").textContent = view.length + " of " + PROBS.length + " problems";
    sel = keep && current >= 0 ? view.indexOf(current) : -1;
    $("#list").scrollTop = 0;
    renderList();
    if (!view.length) $("#detail").innerHTML = '<p class="muted">No problem matches.</p>';
    else if (tab === "problems") select(sel < 0 ? 0 : sel, true);
  }
  function resetFilters() {
    state.cls = ""; state.ok = ""; state.dis = false; state.q = "";
    $("#f-cls").value = ""; $("#f-ok").value = ""; $("#f-dis").checked = false; $("#q").value = "";
    applyFilters(false);
  }
  function setupFilters() {
    $("#f-run").innerHTML = RUNS.map(function (r, j) {
      return '<option value="' + j + '">' + esc(r.name) + "</option>";
    }).join("");
    $("#f-cls").innerHTML += CLASSES.map(function (c) {
      return '<option value="' + c + '">' + LABEL[c] + "</option>";
    }).join("");
    if (RUNS.length < 2) $("#f-dis-wrap").hidden = true;
    $("#f-run").onchange = function () { state.run = +this.value; applyFilters(true); };
    $("#f-cls").onchange = function () { state.cls = this.value; applyFilters(true); };
    $("#f-ok").onchange = function () { state.ok = this.value; applyFilters(true); };
    $("#f-dis").onchange = function () { state.dis = this.checked; applyFilters(true); };
    var timer = null;
    $("#q").oninput = function () {
      var v = this.value.trim().toLowerCase();
      clearTimeout(timer);
      timer = setTimeout(function () { state.q = v; applyFilters(true); }, 120);
    };
    $$(".cls-link").forEach(function (b) {
      b.onclick = function () {
        resetFilters();
        state.run = +b.dataset.run; state.cls = b.dataset.cls;
        $("#f-run").value = b.dataset.run; $("#f-cls").value = b.dataset.cls;
        applyFilters(false);
        history.replaceState(null, "", "#problems");
        show("problems");
      };
    });
  }

  /* ---------- the list ---------- */
  function rowHtml(k) {
    var i = view[k], p = PROBS[i], badges = "", many = RUNS.length > 1;
    for (var j = 0; j < RUNS.length; j++) {
      var c = p.c[j], tip = esc(RUNS[j].name) + ": " + (c ? LABEL[c] + ", last level " + num(p.f[j], 2) : "absent");
      if (many) {
        badges += '<span class="mini' + (c ? " cls-" + c : " absent") + '" title="' + tip +
          '" style="box-shadow: inset 0 -3px 0 ' + RUNS[j].color + '">' +
          (c ? SHORT[c] : "·") + "</span>";
      } else if (c) {
        badges += '<span class="badge cls-' + c + '" title="' + tip + '">' + SHORT[c] + " " + LABEL[c] + "</span>";
      }
    }
    return '<div class="item' + (k === sel ? " sel" : "") + '" data-k="' + k + '" data-id="' +
      esc(p.id) + '" style="top:' + k * ROW + 'px"><div class="l1"><span class="pid">' +
      esc(p.id) + '</span><span class="badges">' + badges + '</span></div><div class="l2">' +
      esc(p.q) + "</div></div>";
  }
  function renderList() {
    var box = $("#list"), inner = $("#list-inner");
    inner.style.height = view.length * ROW + "px";
    var h = box.clientHeight || 800, top = box.scrollTop;
    var a = Math.max(0, Math.floor(top / ROW) - 8);
    var b = Math.min(view.length, Math.ceil((top + h) / ROW) + 8);
    var html = "";
    for (var k = a; k < b; k++) html += rowHtml(k);
    inner.innerHTML = html;
  }
  function select(k, scroll) {
    if (!view.length) return;
    sel = Math.max(0, Math.min(view.length - 1, k));
    var box = $("#list");
    if (scroll) {
      var y = sel * ROW;
      if (y < box.scrollTop) box.scrollTop = y;
      else if (y + ROW > box.scrollTop + box.clientHeight) box.scrollTop = y + ROW - box.clientHeight;
    }
    renderList();
    renderDetail(view[sel]);
    history.replaceState(null, "", "#problem/" + encodeHash(PROBS[view[sel]].id));
  }

  /* ---------- one problem ---------- */
  function renderDetail(i) {
    if (loading()) {
      $("#detail").innerHTML = '<p class="muted">reading the data…</p>';
      whenLoaded(function () { if (view[sel] === i) renderDetail(i); });
      return;
    }
    var p = PROBS[i], d = detail().problems[i];
    var h = '<div class="p-head"><h2 id="p-id">' + esc(p.id) + '</h2><div class="p-classes">';
    RUNS.forEach(function (r, j) {
      if (!p.c[j]) return;
      h += '<span class="badge cls-' + p.c[j] + '" data-run="' + j + '">' + swatch(j) +
        esc(r.name) + ": " + LABEL[p.c[j]] +
        (p.ar[j] !== null && p.ar[j] !== undefined && d.runs[j].levels.length > 1 ?
          " · ARISE " + (p.ar[j] >= 0 ? "+" : "") + p.ar[j].toFixed(3) : "") + "</span>";
    });
    h += '</div><span class="tools"><button data-open="1">expand all</button>' +
      '<button data-open="0">collapse all</button></span></div>';
    h += '<h3>Question</h3><pre class="question">' + esc(d.q) + "</pre>";
    h += '<div class="gold"><b>gold</b> <code>' + esc(d.goldx === null ? "– (none found)" : d.goldx) +
      "</code>";
    if (d.gold !== null && d.gold !== d.goldx) {
      h += '<details><summary>as written</summary><pre>' + esc(d.gold) + "</pre></details>";
    }
    h += "</div>" + sideBySide(d, p);
    d.runs.forEach(function (rr, j) { if (rr) h += runPanel(j, rr); });
    var el = $("#detail");
    el.innerHTML = h;
    el.scrollTop = 0;
  }
  function levelLabel(rec, j) {
    var key = RUNS[j].level_key;
    return "level " + rec.level + (key && rec.level_value !== undefined ?
      " (" + esc(key) + "=" + esc(rec.level_value) + ")" : "");
  }
  function sideBySide(d, p) {
    var levels = {};
    d.runs.forEach(function (rr) { if (rr) rr.levels.forEach(function (l) { levels[l] = 1; }); });
    var ls = Object.keys(levels).map(Number).sort(function (a, b) { return a - b; });
    var h = '<h3>Runs side by side</h3><div class="scroll"><table class="side"><thead><tr><th>run</th>' +
      "<th>class</th>" + ls.map(function (l) { return "<th>level " + l + "</th>"; }).join("") +
      "</tr></thead><tbody>";
    d.runs.forEach(function (rr, j) {
      if (!rr) return;
      var key = RUNS[j].level_key;
      h += '<tr data-run="' + j + '"><th><a href="#" data-jump="' + j + '" title="go to its records">' +
        swatch(j) + esc(RUNS[j].name) + "</a></th><td>" +
        '<span class="badge cls-' + p.c[j] + '">' + LABEL[p.c[j]] + "</span></td>";
      ls.forEach(function (l) {
        var recs = rr.recs.filter(function (r) { return r.level === l; });
        var cell = recs.map(function (r) {
          return '<div class="cell ' + (r.ok ? "right" : "wrong") + '">' + mark(r.ok) +
            " <code>" + esc(r.pred === null ? "none" : r.pred) + '</code> <span class="muted">' +
            (key && r.level_value !== undefined ? esc(key) + "=" + esc(r.level_value) + " · " : "") +
            num(r.ct, 0) + " tok" + (r.repeat ? " · repeat " + esc(r.repeat) : "") + "</span></div>";
        }).join("");
        var li = rr.levels.indexOf(l);
        if (li >= 0 && recs.length > 1) cell += '<div class="muted">accuracy ' + num(rr.a[li], 2) + "</div>";
        h += "<td>" + (cell || '<span class="muted">–</span>') + "</td>";
      });
      h += "</tr>";
    });
    return h + "</tbody></table></div>";
  }
  function runPanel(j, rr) {
    var r = RUNS[j];
    var h = '<section class="run-panel" data-run="' + j + '"><h3>' + swatch(j) + "run " +
      esc(r.name) + ' <span class="muted">' + esc(r.strategy.join(", ")) + "</span></h3>";
    rr.recs.forEach(function (rec) { h += recordPanel(j, rec); });
    return h + "</section>";
  }
  function recordPanel(j, rec) {
    var h = '<details class="record" open><summary>' + levelLabel(rec, j) +
      (rec.repeat ? " · repeat " + esc(rec.repeat) : "") + " · pred <code>" +
      esc(rec.pred === null ? "none" : rec.pred) + "</code> " + mark(rec.ok) + " · " +
      num(rec.ct, 0) + " tokens" + (rec.st !== null ? " (sequential " + num(rec.st, 0) + ")" : "") +
      (rec.wall !== null ? " · " + num(rec.wall, 2) + " s" : "") +
      ' <span class="muted at">' + esc(rec.at) + "</span></summary><div class=\"rec-body\">";
    var facts = { "prompt tokens": rec.pt, "prefill tokens": rec.prefill_tokens, rounds: rec.rounds,
                  traces: rec.traces.length };
    if (rec.old !== undefined) facts["pred before --regrade"] = rec.old;
    h += '<div class="facts">' + Object.keys(facts).filter(function (k) {
      return facts[k] !== undefined && facts[k] !== null;
    }).map(function (k) { return "<span>" + k + " <b>" + num(facts[k], 0) + "</b></span>"; }).join("") +
      "</div>";
    if (rec.votes.length && rec.traces.length > 1) h += votesTable(rec);
    if (rec.bf) h += '<div class="block bf"><h4>budget forcing</h4>' + kv(rec.bf) + "</div>";
    (rec.search || []).forEach(function (s) { h += searchBlock(s, rec); });
    if (rec.refine) h += refineBlock(rec.refine);
    if (rec.memory && rec.memory.length) h += memoryBlock(rec.memory);
    if (Object.keys(rec.x).length) h += '<div class="block other"><h4>other fields</h4>' + kv(rec.x) + "</div>";
    h += '<div class="traces"><h4>traces (' + rec.traces.length + ")</h4>";
    rec.traces.forEach(function (t, ti) { h += traceCard(t, ti, RUNS[j].ignore_str); });
    return h + "</div></div></details>";
  }
  function votesTable(rec) {
    var most = Math.max.apply(null, rec.votes.map(function (v) { return v.votes; }));
    var h = '<div class="block votes"><h4>votes per answer</h4><table class="votes"><thead><tr>' +
      "<th>answer</th><th>votes</th><th></th><th>traces</th></tr></thead><tbody>";
    rec.votes.forEach(function (v) {
      var ans = v.novote ? '<span class="muted">no answer (no vote)</span>' :
        v.answer === null ? '<span class="muted">no answer ([invalid])</span>' :
        "<code>" + esc(v.answer) + "</code>";
      h += '<tr class="' + (v.chosen ? "chosen" : "") + '"><td>' + ans +
        (v.chosen ? ' <span class="tag" title="the record\'s pred">pred</span>' : "") + "</td><td>" +
        '<span class="bar" style="width:' + Math.round(80 * v.votes / most) + 'px"></span> ' +
        v.votes + "</td><td>" + mark(v.ok) + "</td><td class=\"muted\">" +
        v.traces.map(function (t) { return "#" + t; }).join(" ") + "</td></tr>";
    });
    return h + "</tbody></table></div>";
  }
  function kv(obj) {
    return '<table class="kv">' + Object.keys(obj).map(function (k) {
      var v = obj[k];
      var s = v !== null && typeof v === "object" ? "<pre>" + esc(JSON.stringify(v, null, 1)) + "</pre>" :
        esc(v === null ? "null" : v);
      return "<tr><th>" + esc(k) + "</th><td>" + s + "</td></tr>";
    }).join("") + "</table>";
  }
  function traceCard(t, ti, ignoreStr) {
    var x = t.x || {}, bf = x.budget_forcing || {}, chips = [];
    var ignored = bf.ignored !== undefined ? bf.ignored : x.ignored;
    var forced = bf.forced_end !== undefined ? bf.forced_end : x.forced_end;
    if (ignored) chips.push('<span class="chip ignore">ignored ×' + esc(ignored) + "</span>");
    if (forced) chips.push('<span class="chip forced">forced end</span>');
    if (bf.thinking_tokens !== undefined) {
      chips.push('<span class="chip">thinking ' + num(bf.thinking_tokens, 0) + " + answer " +
        num(bf.answer_tokens, 0) + " tokens</span>");
    }
    Object.keys(x).forEach(function (k) {
      if (k === "budget_forcing" || k === "ignored" || k === "forced_end") return;
      var v = x[k];
      if (v === null || v === undefined) return;
      if (k === "step_scores" && Array.isArray(v)) {
        v = v.map(function (s) { return typeof s === "number" ? s.toFixed(3) : short(s); }).join(" → ");
      }
      chips.push('<span class="chip">' + esc(k) + " " + esc(short(v)) + "</span>");
    });
    return '<div class="trace ' + (t.ok ? "right" : "wrong") + '" data-trace="' + ti + '">' +
      '<div class="t-head"><b>#' + ti + "</b> pred <code>" + esc(t.pred === null ? "none" : t.pred) +
      "</code> " + mark(t.ok) + " · " + num(t.ct, 0) + " tok · finish " + esc(short(t.fr)) +
      (t.score !== null && t.score !== undefined ? " · score " + num(t.score) : "") +
      (t.old !== undefined ? " · before --regrade " + esc(short(t.old)) : "") + " " +
      chips.join(" ") + '</div><pre class="trace-text">' +
      traceText(t.text, ignored ? ignoreStr : null, forced) + "</pre></div>";
  }
  function traceText(text, ignoreStr, forced) {
    if (text === null || text === undefined) return '<span class="muted">(no text)</span>';
    if (typeof text !== "string") return esc(JSON.stringify(text));
    function marks(s) {
      if (!ignoreStr) return esc(s);
      return s.split(ignoreStr).map(esc).join('<mark class="ignore" title="the ignore string: ' +
        'budget forcing continued the trace here">' + esc(ignoreStr) + "</mark>");
    }
    var FA = "Final Answer:", k = forced ? text.lastIndexOf(FA) : -1;
    if (k < 0) return marks(text);
    return marks(text.slice(0, k)) + '<mark class="forced" title="forced end: the thinking budget ' +
      'ran out and the answer was asked for">' + FA + "</mark>" + marks(text.slice(k + FA.length));
  }
  function searchBlock(s, rec) {
    var h = '<div class="block search" data-kind="' + esc(s.kind) + '"><h4>' + esc(s.kind) +
      " search" + (Object.keys(s.params).length ? ' <span class="muted">' +
      Object.keys(s.params).map(function (k) { return esc(k) + " " + esc(short(s.params[k])); }).join(" · ") +
      "</span>" : "") + "</h4>";
    if (s.warn) h += '<p class="warn">' + esc(s.warn) + "</p>";
    if (s.tree) h += treeSvg(s.tree, rec.traces);
    if (!(s.iterations || []).length) return h + "</div>";     // a tree kept whole (mcts)
    h += '<table class="iters"><thead><tr><th>iteration</th><th>candidates</th><th>survivors</th>' +
      "<th>rollouts per survivor</th><th>pruned</th></tr></thead><tbody>";
    (s.iterations || []).forEach(function (it) {
      if (!it || typeof it !== "object") return;
      var pruned = typeof it.candidates === "number" && typeof it.survivors === "number" ?
        it.candidates - it.survivors : "–";
      h += "<tr><td>" + esc(short(it.step)) + "</td><td>" + esc(short(it.candidates)) + "</td><td>" +
        esc(short(it.survivors)) + "</td><td>" + esc(Array.isArray(it.rollouts) ? it.rollouts.join(", ") :
        short(it.rollouts)) + "</td><td>" + pruned + "</td></tr>";
    });
    return h + "</tbody></table></div>";
  }
  function treeSvg(tree, traces) {
    var n = tree.length, kids = [], y = new Array(n), leaves = 0, depth = 0, i;
    for (i = 0; i < n; i++) kids.push([]);
    for (i = 0; i < n; i++) {
      if (tree[i][0] !== null) kids[tree[i][0]].push(i);
      depth = Math.max(depth, tree[i][1]);
    }
    (function place(v) {
      if (!kids[v].length) { y[v] = leaves++; return; }
      kids[v].forEach(place);
      y[v] = (y[kids[v][0]] + y[kids[v][kids[v].length - 1]]) / 2;
    })(0);
    var DX = 120, DY = 26, X0 = 16, Y0 = 18;
    var W = X0 + depth * DX + 190, H = Y0 * 2 + Math.max(0, leaves - 1) * DY;
    var px = function (v) { return X0 + tree[v][1] * DX; };
    var py = function (v) { return Y0 + y[v] * DY; };
    var out = '<svg class="tree" width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " + H + '">';
    for (i = 1; i < n; i++) {
      var p = tree[i][0];
      if (p === null) continue;
      var mx = (px(p) + px(i)) / 2;
      out += '<path class="edge s-' + STATUS[tree[i][4]] + '" d="M' + px(p) + "," + py(p) + " C" + mx + "," +
        py(p) + " " + mx + "," + py(i) + " " + px(i) + "," + py(i) + '"/>';
    }
    for (i = 0; i < n; i++) {
      var nd = tree[i], st = STATUS[nd[4]], t = nd[5] !== null ? traces[nd[5]] : null;
      var cls = "tree-node s-" + st + (t ? (t.ok ? " right" : " wrong") : "");
      var tip = st === "root" ? "the prompt" : "step " + nd[1] + " · " + (nd[2] === null ?
        "not recorded (" + (st === "pruned" ? "pruned" : "expanded, no finished descendant") + ")" :
        (nd.length > 6 ? "value when made " + nd[2].toFixed(4) + " · mean value " + nd[3].toFixed(4) :
        "step score " + nd[2].toFixed(4) + " · path score " + nd[3].toFixed(4)) + " · " + st);
      if (nd.length > 6) tip += " · " + nd[6] + " visit" + (nd[6] === 1 ? "" : "s");
      if (t) tip += " · trace #" + nd[5] + " pred " + (t.pred === null ? "none" : t.pred) + (t.ok ? " ✓" : " ✗");
      out += '<g class="' + cls + '" data-status="' + st + '"' + (nd[5] !== null ? ' data-trace="' + nd[5] + '"' : "") +
        "><title>" + esc(tip) + '</title><circle cx="' + px(i) + '" cy="' + py(i) + '" r="' +
        (st === "root" ? 7 : 6) + '"/>';
      if (nd[2] !== null && st !== "complete") {
        out += '<text class="sc" x="' + px(i) + '" y="' + (py(i) - 9) + '" text-anchor="middle">' +
          nd[2].toFixed(2) + "</text>";
      }
      if (t) {
        out += '<text class="lb" x="' + (px(i) + 10) + '" y="' + (py(i) + 4) + '">#' + nd[5] + " " +
          esc(t.pred === null ? "none" : String(t.pred).slice(0, 16)) + " " + (t.ok ? "✓" : "✗") +
          " (" + (nd[2] === null ? "–" : nd[2].toFixed(2)) + ")</text>";
      }
      out += "</g>";
    }
    out += "</svg>";
    return '<div class="tree-wrap">' + out + '<div class="legend muted"><span class="lg root"></span>prompt ' +
      '<span class="lg expanded"></span>survived (expanded) <span class="lg complete right"></span>finished ✓ ' +
      '<span class="lg complete wrong"></span>finished ✗ <span class="lg pruned"></span>pruned or ' +
      "unfinished (not recorded)</div></div>";
  }
  function refineBlock(rf) {
    var h = '<div class="block refine"><h4>refinement turns <span class="muted">pred: ' +
      esc(rf.agg || "last") + " turn</span></h4><table class=\"turns\"><thead><tr><th>turn</th>" +
      "<th>answer</th><th></th><th>its traces' answers</th><th>tokens</th><th>sequential</th></tr>" +
      "</thead><tbody>";
    rf.turns.forEach(function (t) {
      h += "<tr><td>" + esc(short(t.turn)) + "</td><td><code>" + esc(t.pred === null ? "none" : short(t.pred)) +
        "</code></td><td>" + mark(t.ok) + "</td><td>" + (t.preds || []).map(function (p) {
          return "<code>" + esc(p[0] === null ? "none" : short(p[0])) + "</code>" + mark(p[1]);
        }).join(" ") + "</td><td>" + num(t.ct, 0) + "</td><td>" + num(t.st, 0) + "</td></tr>";
    });
    h += '</tbody></table><p class="muted">The traces below are the last turn\'s.</p>';
    if (Object.keys(rf.x || {}).length) h += kv(rf.x);
    return h + "</div>";
  }
  function memoryBlock(ids) {
    var items = detail().memory || {};
    return '<div class="block memory"><h4>retrieved memory items</h4><ul>' + ids.map(function (id) {
      var it = own(items, id) ? items[id] : null;
      if (!it) return '<li><code>' + esc(id) + '</code> <span class="muted">(text not in the bank ' +
        "given; see --memory)</span></li>";
      return "<li><details><summary><code>" + esc(id) + "</code> " + esc(it.title || "") +
        ' <span class="muted">' + esc([it.kind, it.outcome].filter(Boolean).join(", ")) +
        "</span></summary><pre>" + esc(it.text || "") + "</pre></details></li>";
    }).join("") + "</ul></div>";
  }

  /* ---------- keys ---------- */
  document.addEventListener("keydown", function (e) {
    var t = e.target, inField = t.matches && t.matches("input, select, textarea");
    if (e.key === "Escape" && inField) { t.blur(); return; }
    if (inField || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "/") { show("problems"); $("#q").focus(); e.preventDefault(); return; }
    if (tab !== "problems") return;
    if (e.key === "j" || e.key === "ArrowDown") { select(sel + 1, true); e.preventDefault(); }
    else if (e.key === "k" || e.key === "ArrowUp") { select(sel - 1, true); e.preventDefault(); }
  });

  function init() {
    setupFilters();
    $("#list").addEventListener("scroll", function () {
      if (!renderList.pending) {
        renderList.pending = true;
        requestAnimationFrame(function () { renderList.pending = false; renderList(); });
      }
    });
    $("#list").addEventListener("click", function (e) {
      var item = e.target.closest(".item");
      if (item) select(+item.dataset.k, false);
    });
    $("#detail").addEventListener("click", function (e) {
      var jump = e.target.closest("[data-jump]"), open = e.target.closest("[data-open]");
      if (jump) {
        e.preventDefault();
        var panel = $('.run-panel[data-run="' + jump.dataset.jump + '"]');
        if (panel) panel.scrollIntoView({ block: "start" });
      } else if (open) {
        $$("#detail details.record").forEach(function (d) { d.open = open.dataset.open === "1"; });
      }
    });
    if (RUNS.length > 1) {
      $("#legend").innerHTML = "badges: " + RUNS.map(function (r, j) {
        return swatch(j) + esc(r.name);
      }).join(" ");
    }
    window.addEventListener("hashchange", route);
    window.addEventListener("resize", function () { if (tab === "problems") renderList(); });
    applyFilters(false);
    route();
    requestAnimationFrame(function () {          // the overview painted, the list ready
      setTimeout(function () {
        window.ttxFirstView = performance.now();
        whenLoaded(function () { document.body.setAttribute("data-ready", "1"); });
      }, 0);
    });
  }
  init();
})();
