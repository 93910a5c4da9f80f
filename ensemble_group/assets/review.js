// Review in the page: decisions kept in localStorage, exported as corrections.json (corrections.py).
// Keys: j/k group, h/l photo, y looks right, x not this product, m move to group #, s same product as #,
// u undo, e export, ? help. Photos are addressed by their index in the page (data-i), exported by hash.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("review-data").textContent);
  var KEY = "ensemble-group-review:" + data.key;
  var figs = Array.prototype.slice.call(document.querySelectorAll("figure[data-i]"));
  var boxes = Array.prototype.slice.call(document.querySelectorAll("[data-gid]"));
  var boxOf = {}, home = {}, slot = {};
  boxes.forEach(function (b) { boxOf[b.dataset.gid] = b; });
  figs.forEach(function (f) { home[f.dataset.i] = f.closest("[data-gid]").dataset.gid; });
  var state = load(), history = [], sel = {box: null, fig: null}, asking = null;
  var bar = document.getElementById("review"), status = bar.querySelector(".status");
  var ask = bar.querySelector("input"), askLabel = bar.querySelector(".ask");

  function load() {
    try {
      var s = JSON.parse(localStorage.getItem(KEY));
      if (s && s.moves && s.merges && s.confirmed) return s;
    } catch (e) { /* a damaged entry: start afresh */ }
    return {moves: {}, merges: [], confirmed: []};
  }
  function save() { try { localStorage.setItem(KEY, JSON.stringify(state)); } catch (e) { say("not saved: " + e); } }
  function say(text) { status.textContent = text; }
  function change(fn) { history.push(JSON.stringify(state)); fn(); render(); save(); }
  function decisions() { return Object.keys(state.moves).length + state.merges.length + state.confirmed.length; }

  function render() {
    figs.forEach(function (f) {
      if (slot[f.dataset.i] && f.parentNode !== slot[f.dataset.i].parentNode) slot[f.dataset.i].after(f);
      f.classList.remove("moved");
      var t = f.querySelector(".from"); if (t) t.remove();
    });
    document.querySelectorAll(".outrow").forEach(function (r) { if (!r.querySelector("figure")) r.remove(); });
    boxes.forEach(function (b) {
      b.classList.remove("ok");
      b.querySelectorAll(".same").forEach(function (e) { e.remove(); });
    });
    Object.keys(state.moves).forEach(function (i) {
      var f = figs[i], to = state.moves[i];
      if (!slot[i]) { slot[i] = document.createElement("i"); slot[i].className = "slot"; f.before(slot[i]); }
      var target;
      if (to === "out") {
        var b = boxOf[home[i]];
        target = b.querySelector(".outrow");
        if (!target) {
          target = document.createElement("div"); target.className = "row outrow";
          target.setAttribute("data-label", "taken out: not this product"); b.appendChild(target);
        }
      } else {
        target = boxOf[to].querySelector(".row") || boxOf[to];
      }
      target.appendChild(f);
      f.classList.add("moved");
      var tag = document.createElement("span"); tag.className = "from";
      tag.textContent = to === "out" ? "taken out" : "from #" + home[i];
      f.querySelector("figcaption").appendChild(tag);
    });
    state.merges.forEach(function (m) {
      [[m[0], m[1]], [m[1], m[0]]].forEach(function (p) {
        var b = boxOf[p[0]], h = b.querySelector("h3") || b, s = document.createElement("span");
        s.className = "badge same"; s.textContent = "same product as #" + p[1]; h.appendChild(s);
      });
    });
    state.confirmed.forEach(function (g) { boxOf[g].classList.add("ok"); });
    bar.querySelector(".count").textContent = count(decisions(), "decision");
    document.body.setAttribute("data-decisions", decisions());
  }

  function select(box, fig) {
    if (sel.box) sel.box.classList.remove("focus");
    if (sel.fig) sel.fig.classList.remove("sel");
    sel = {box: box, fig: fig || (box && box.querySelector("figure")) || null};
    if (sel.box) sel.box.classList.add("focus");
    if (sel.fig) sel.fig.classList.add("sel");
    var el = sel.fig || sel.box;
    if (el) el.scrollIntoView({block: "nearest"});
  }
  function step(d) {
    var i = boxes.indexOf(sel.box);
    select(boxes[Math.max(0, Math.min(boxes.length - 1, i < 0 ? 0 : i + d))]);
  }
  function stepPhoto(d) {
    if (!sel.box) return step(1);
    var fs = Array.prototype.slice.call(sel.box.querySelectorAll("figure"));
    var i = fs.indexOf(sel.fig);
    select(sel.box, fs[Math.max(0, Math.min(fs.length - 1, i + d))]);
  }

  var act = {
    y: function () {
      if (!sel.box) return say("select a group first (click it, or j / k)");
      var g = sel.box.dataset.gid;
      change(function () {
        var at = state.confirmed.indexOf(g);
        if (at < 0) state.confirmed.push(g); else state.confirmed.splice(at, 1);
      });
      say((state.confirmed.indexOf(g) < 0 ? "unconfirmed #" : "confirmed #") + g);
    },
    x: function () {
      if (!sel.fig) return say("select a photo first (click it, or h / l)");
      var i = sel.fig.dataset.i;
      if (boxOf[home[i]].querySelectorAll("figure").length < 2 && state.moves[i] === undefined)
        return say("this photo is alone already");
      change(function () { state.moves[i] = "out"; });
      say("taken out of #" + home[i]);
    },
    m: function () { if (!sel.fig) return say("select a photo first"); start("m", "move this photo to group #"); },
    s: function () { if (!sel.box) return say("select a group first"); start("s", "same product as group #"); },
    u: function () {
      if (!history.length) return say("nothing to undo");
      state = JSON.parse(history.pop()); render(); save(); say("undone");
    },
    e: exportFile,
    "?": function () { var h = bar.querySelector("details"); h.open = !h.open; }
  };

  function start(kind, label) {
    asking = kind; askLabel.textContent = label; bar.classList.add("asking"); ask.value = ""; ask.focus();
  }
  function finish(commit) {
    var kind = asking, g = ask.value.trim().replace(/^#/, "");
    asking = null; bar.classList.remove("asking"); ask.blur();
    if (!commit) return say("cancelled");
    if (!boxOf[g]) return say("no group #" + g);
    if (kind === "m") {
      var i = sel.fig.dataset.i;
      change(function () { if (g === home[i]) delete state.moves[i]; else state.moves[i] = g; });
      say(g === home[i] ? "back in #" + g : "moved to #" + g);
    } else {
      var a = sel.box.dataset.gid;
      if (a === g) return say("a group is the same product as itself");
      change(function () { state.merges.push([a, g]); });
      say("#" + a + " and #" + g + ": same product");
    }
  }

  function corrections() {
    var parent = {}, members = {}, sha = function (i) { return figs[i].dataset.sha; };
    function find(g) { while (parent[g] !== undefined && parent[g] !== g) g = parent[g]; return g; }
    state.merges.forEach(function (m) { var a = find(m[0]), b = find(m[1]); if (a !== b) parent[b] = a; });
    function where(i) { var t = state.moves[i]; return t === undefined ? home[i] : t === "out" ? "out" + i : t; }
    figs.forEach(function (f, i) { var r = find(where(i)); (members[r] = members[r] || []).push(i); });
    function anchor(g, not) {  // a photo of group g that stayed in it (else any member), not `not`
      var stay = (members[find(g)] || []).filter(function (i) { return i !== not; });
      var own = stay.filter(function (i) { return home[i] === g && state.moves[i] === undefined; });
      return own.length ? own[0] : stay[0];
    }
    var must = [], cannot = [], confirmed = [], seen = {};
    function pair(list, a, b) {
      var x = sha(a), y = sha(b), k = x < y ? x + y : y + x;
      if (x !== y && !seen[k]) { seen[k] = 1; list.push([x, y]); }
    }
    Object.keys(state.moves).forEach(function (key) {
      var i = Number(key), to = state.moves[key], from = home[i];
      if (to !== "out" && find(to) === find(from)) return;
      (members[find(from)] || []).forEach(function (q) { if (q !== i) pair(cannot, i, q); });
      if (to !== "out") { var a = anchor(to, i); if (a !== undefined) pair(must, i, a); }
    });
    var linked = {};
    state.merges.forEach(function (m) {  // "same product": every photo of the merged groups, one product
      var r = find(m[0]), a = anchor(m[0]);
      if (linked[r] || a === undefined) return;
      linked[r] = 1;
      members[r].forEach(function (i) { if (i !== a) pair(must, i, a); });
    });
    var done = {};
    state.confirmed.forEach(function (g) {
      var r = find(g);
      if (!done[r] && members[r]) { done[r] = 1; confirmed.push(members[r].map(sha)); }
    });
    var names = Object.assign({}, data.names);
    figs.forEach(function (f) { names[f.dataset.sha] = f.dataset.rel; });
    var round = {exported: new Date().toISOString(), from: data.from, must_link: must, cannot_link: cannot,
                 confirmed: confirmed};
    return {kind: "ensemble-group corrections", version: 1, input: data.input,
            rounds: data.rounds.concat([round]), names: names};
  }
  function exportFile() {
    var doc = corrections(), r = doc.rounds[doc.rounds.length - 1];
    var blob = new Blob([JSON.stringify(doc, null, 1) + "\n"], {type: "application/json"});
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = "corrections.json";
    document.body.appendChild(a); a.click(); a.remove();
    say("exported corrections.json: " + count(r.must_link.length, "must-link") + ", " +
        count(r.cannot_link.length, "cannot-link") + ", " + count(r.confirmed.length, "confirmed group") +
        (data.rounds.length ? " (and " + count(data.rounds.length, "earlier round") + ")" : "") +
        "; rerun: ensemble-group group FOLDER --corrections corrections.json");
  }
  function count(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (asking) {
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      else if (e.key === "Escape") { e.preventDefault(); finish(false); }
      return;
    }
    if (e.target && /INPUT|TEXTAREA/.test(e.target.tagName)) return;
    var keys = {j: function () { step(1); }, k: function () { step(-1); }, l: function () { stepPhoto(1); },
                h: function () { stepPhoto(-1); }};
    var fn = keys[e.key] || act[e.key];
    if (fn) { e.preventDefault(); fn(); }
  });
  document.addEventListener("click", function (e) {
    var b = e.target.closest("button[data-act]");
    var fig = e.target.closest("figure[data-i]"), box = e.target.closest("[data-gid]");
    if (box) select(box, fig);
    if (b) { e.preventDefault(); act[b.dataset.act](); }
  });
  render();
  if (decisions()) say("restored " + decisions() + " decisions from this browser");
})();
