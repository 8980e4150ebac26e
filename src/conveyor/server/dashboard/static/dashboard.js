// conveyor live dashboard: polls the scheduler's JSON API (relative URLs, so any
// http_prefix works) and renders into the static page. No framework, no other host.
// One request a second, for a snapshot of everything; rendering happens in
// requestAnimationFrame and only for the parts whose data changed; DOM rows are kept
// and updated, never rebuilt.
"use strict";

(function () {
  const POLL_MS = 1000; // one snapshot request a second, measured from its start
  const MAX_BACKOFF_MS = 5000;
  const WINDOW_S = 20; // task stream span
  const MAX_RECTS = 20000;
  const LABEL_PX = 64; // the task stream's margin for worker names
  const ERRED_COLOUR = "#d13b3b"; // runs that raised (the --erred of the stylesheet)
  const STREAM_LIMIT = 10000; // runs per task-stream poll (the scheduler keeps 10,000)
  const PENDING = ["waiting", "queued", "no-worker", "processing"];
  const BAR_STATES = ["memory", "processing", "queued", "waiting", "erred"];
  const STATE_LABELS = {
    memory: "in memory", processing: "processing", queued: "queued", waiting: "waiting", erred: "erred",
  };

  const state = {
    status: null,
    workers: null,
    prefixes: null,
    // rectangles {prefix, worker, start, stop, n}: runs of one prefix on one worker that
    // touch (closer than a pixel's time) are merged, so thousands of tiny tasks a second
    // cost a handful of rectangles
    stream: [],
    lastRect: new Map(), // worker -> its newest rectangle
    cursor: 0,
    clockOffset: 0, // server time - browser time, seconds (only grows on skew)
    failures: {},
    dirty: { status: false, workers: false, prefixes: false, stream: false },
    frameRequested: false,
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- formatting
  function fmtBytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }
  function fmtDuration(s) {
    if (!isFinite(s)) return "–";
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function setText(el, text) {
    if (el && el.textContent !== text) el.textContent = text;
  }
  function setWidth(el, fraction) {
    // compare with what we last wrote: the browser normalises style.width ("25.00%" -> "25%")
    const w = (Math.max(0, Math.min(1, fraction || 0)) * 100).toFixed(2) + "%";
    if (el.dataset.width !== w) {
      el.dataset.width = w;
      el.style.width = w;
    }
  }
  function colour(prefix) {
    let h = 0;
    for (let i = 0; i < prefix.length; i++) h = (h * 31 + prefix.charCodeAt(i)) >>> 0;
    return "hsl(" + (h % 360) + ", 60%, 50%)";
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---------------------------------------------------------------- polling
  function setConnection(ok) {
    const c = $("connection");
    const want = ok ? "connected" : "disconnected";
    if (c.dataset.state !== want) {
      c.dataset.state = want;
      c.textContent = want;
    }
  }

  function schedule() {
    if (!state.frameRequested) {
      state.frameRequested = true;
      window.requestAnimationFrame(render);
    }
  }

  // Poll `url()` forever with one request in flight; `onData` returns true if the data
  // changed. Failures back off exponentially (up to MAX_BACKOFF_MS) and show
  // "disconnected" until any endpoint answers again.
  function poll(name, url, onData) {
    let delay = POLL_MS;
    async function once() {
      const started = Date.now();
      try {
        const response = await fetch(url(), { cache: "no-store" });
        if (!response.ok) throw new Error(name + ": HTTP " + response.status);
        const data = await response.json();
        state.failures[name] = 0;
        delay = POLL_MS;
        setConnection(Object.values(state.failures).every((n) => n === 0));
        if (onData(data)) schedule();
      } catch (err) {
        state.failures[name] = (state.failures[name] || 0) + 1;
        delay = Math.min(MAX_BACKOFF_MS, POLL_MS * Math.pow(2, state.failures[name]));
        setConnection(false);
      }
      window.setTimeout(once, Math.max(0, delay - (Date.now() - started)));
    }
    state.failures[name] = 0;
    once();
  }

  function changed(kind, previous, next) {
    if (JSON.stringify(previous) === JSON.stringify(next)) return false;
    state.dirty[kind] = true;
    return true;
  }

  // the parts of a snapshot; each returns true if its data changed
  function onStatus(data) {
    const was = state.status;
    state.status = data;
    return changed("status", was, data);
  }
  function onWorkers(data) {
    const was = state.workers;
    state.workers = data;
    return changed("workers", was, data);
  }
  function onPrefixes(data) {
    const was = state.prefixes;
    state.prefixes = data;
    return changed("prefixes", was, data);
  }
  // the task stream in its compact form: no keys, the runs as columns (prefix and
  // worker indices, start ms after t0, duration ms); at most STREAM_LIMIT runs a poll
  // the time one pixel of the task stream spans, in seconds
  function pixelSeconds() {
    return WINDOW_S / Math.max(200, $("task-stream").clientWidth || 800);
  }
  function onStream(data) {
    if (typeof data.next === "number") state.cursor = data.next;
    const tasks = data.tasks || {};
    const ps = tasks.prefix || [], ws = tasks.worker || [];
    const starts = tasks.start || [], durations = tasks.duration || [];
    const erred = new Set(tasks.erred || []);  // indices of the runs that raised
    const counts = tasks.count || null;  // runs per span, when the scheduler merged them
    const prefixes = data.prefixes || [];
    const workers = data.workers || [];
    const t0 = Number(data.t0) || 0;
    const nowBrowser = Date.now() / 1000;
    const gap = pixelSeconds();
    for (let j = 0; j < ps.length; j++) {
      const n = counts ? counts[j] : 1;
      const prefix = prefixes[ps[j]];
      const worker = workers[ws[j]];
      const start = t0 + starts[j] / 1000;
      const stop = start + durations[j] / 1000;
      if (stop - nowBrowser > state.clockOffset) state.clockOffset = stop - nowBrowser;
      const failed = erred.has(j);
      const prev = state.lastRect.get(worker);
      if (!failed && prev && !prev.erred && prev.prefix === prefix &&
          start <= prev.stop + gap && stop >= prev.start - gap) {
        if (stop > prev.stop) prev.stop = stop;
        if (start < prev.start) prev.start = start;
        prev.n += n;
      } else {
        const rect = { prefix: prefix, worker: worker, start: start, stop: stop, n: n, erred: failed };
        state.stream.push(rect);
        state.lastRect.set(worker, rect);
      }
    }
    if (state.stream.length > MAX_RECTS) state.stream.splice(0, state.stream.length - MAX_RECTS);
    // Redraw while anything is still inside the window (it scrolls with time).
    const now = nowBrowser + state.clockOffset;
    const visible = state.stream.length > 0 &&
      state.stream[state.stream.length - 1].stop > now - WINDOW_S - 1;
    if (ps.length || visible) state.dirty.stream = true;
    return state.dirty.stream;
  }

  function start() {
    // one request a second for everything: a request costs the browser (and the
    // scheduler) more than its bytes, so the page asks for one snapshot, not four parts
    // the scheduler merges runs closer than a pixel: the answer is what can be drawn
    const url = () => "api/v1/snapshot?limit=" + STREAM_LIMIT + "&since=" + state.cursor +
      "&merge_ms=" + Math.max(1, Math.round(pixelSeconds() * 1000));
    poll("snapshot", url, (data) => {
      const a = onStatus(data.status);
      const b = onWorkers(data.workers);
      const c = onPrefixes(data.prefixes);
      const d = onStream(data.task_stream || {});
      return a || b || c || d;
    });
  }

  // ---------------------------------------------------------------- rendering
  function render() {
    state.frameRequested = false;
    if (state.dirty.status) { state.dirty.status = false; renderStatus(); }
    if (state.dirty.workers) { state.dirty.workers = false; renderWorkers(); }
    if (state.dirty.prefixes) { state.dirty.prefixes = false; renderPrefixes(); }
    if (state.dirty.stream) { state.dirty.stream = false; renderStream(); }
    document.body.dataset.renders = String((Number(document.body.dataset.renders) || 0) + 1);
  }

  function renderStatus() {
    const s = state.status;
    setText($("scheduler-address"), String(s.scheduler));
    setText($("workers-count"), String(s.workers));
    setText($("threads-count"), String(s.threads));
    setText($("tasks-count"), String(s.tasks));
    setText($("loop-lag"), Number(s.loop_lag_ms).toFixed(1) + " ms");
    setText($("uptime"), fmtDuration(Number(s.uptime)));
  }

  function memoryBar() {
    const bar = el("div", "bar");
    for (const part of ["managed", "unmanaged", "spilled"]) bar.appendChild(el("span", part));
    return bar;
  }

  function renderWorkers() {
    const body = document.querySelector("#workers tbody");
    const rows = new Map();
    for (const row of Array.from(body.rows)) rows.set(row.dataset.worker, row);
    const seen = new Set();
    let previous = null;
    for (const w of state.workers) {
      seen.add(w.address);
      let row = rows.get(w.address);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.worker = w.address;
        for (const cls of ["name", "address", "nthreads num", "status", "cpu", "mem", "w-executing num", "w-processing num"]) {
          row.appendChild(el("td", cls));
        }
        const cpu = el("div", "cpu-cell");
        const cpuBar = el("div", "bar");
        cpuBar.appendChild(el("span"));
        cpu.appendChild(cpuBar);
        cpu.appendChild(el("span", "label"));
        row.querySelector(".cpu").appendChild(cpu);
        const mem = row.querySelector(".mem");
        mem.appendChild(memoryBar());
        mem.appendChild(el("span", "label"));
      }
      // keep rows in API order without rebuilding them
      const expectedPosition = previous ? previous.nextSibling : body.firstChild;
      if (row !== expectedPosition) body.insertBefore(row, expectedPosition);
      previous = row;
      setText(row.querySelector(".name"), String(w.name));
      setText(row.querySelector(".address"), w.address);
      setText(row.querySelector(".nthreads"), String(w.nthreads));
      setText(row.querySelector(".status"), String(w.status));
      const cpuPercent = Number(w.cpu) || 0;
      setWidth(row.querySelector(".cpu .bar span"), cpuPercent / (100 * Math.max(1, w.nthreads)));
      setText(row.querySelector(".cpu .label"), cpuPercent.toFixed(0) + "%");
      const m = w.memory || {};
      const limit = m.limit || (m.managed || 0) + (m.unmanaged || 0) + (m.spilled || 0) || 1;
      const spans = row.querySelectorAll(".mem .bar span");
      setWidth(spans[0], (m.managed || 0) / limit);
      setWidth(spans[1], (m.unmanaged || 0) / limit);
      setWidth(spans[2], (m.spilled || 0) / limit);
      setText(row.querySelector(".mem .label"),
        fmtBytes(m.managed || 0) + " managed + " + fmtBytes(m.unmanaged || 0) + " unmanaged / " +
        (m.limit ? fmtBytes(m.limit) : "no limit") + ", " + fmtBytes(m.spilled || 0) + " spilled");
      setText(row.querySelector(".w-executing"), String(w.executing));
      setText(row.querySelector(".w-processing"), String(w.processing));
    }
    for (const [address, row] of rows) if (!seen.has(address)) row.remove();
  }

  function renderPrefixes() {
    const container = $("progress");
    const rows = new Map();
    for (const row of Array.from(container.children)) rows.set(row.dataset.prefix, row);
    const seen = new Set();
    let previous = null;
    for (const p of state.prefixes) {
      seen.add(p.prefix);
      let row = rows.get(p.prefix);
      if (!row) {
        row = el("div", "prefix-row");
        row.dataset.prefix = p.prefix;
        const name = el("span", "prefix-name", p.prefix);
        name.title = p.prefix;
        row.appendChild(name);
        const bar = el("div", "bar");
        for (const s of BAR_STATES) bar.appendChild(el("span", s));
        row.appendChild(bar);
        row.appendChild(el("span", "done-percent"));
        row.appendChild(el("span", "counts"));
        row.appendChild(el("span", "states"));
      }
      const expectedPosition = previous ? previous.nextSibling : container.firstChild;
      if (row !== expectedPosition) container.insertBefore(row, expectedPosition);
      previous = row;
      const total = Number(p.total) || 0;
      const pending = PENDING.reduce((n, s) => n + (Number(p[s]) || 0), 0);
      const done = total > 0 ? (total - pending) / total : 0;
      const parts = [];
      for (const s of BAR_STATES) {
        // tasks no worker can run yet are drawn and counted with the waiting ones
        const n = (Number(p[s]) || 0) + (s === "waiting" ? Number(p["no-worker"]) || 0 : 0);
        const segment = row.querySelector(".bar ." + s);
        setWidth(segment, total > 0 ? n / total : 0);
        const label = n + " " + STATE_LABELS[s];
        if (segment.title !== label) segment.title = label;
        if (n) parts.push(label);
      }
      setText(row.querySelector(".states"), parts.join(" · "));
      const percent = Math.floor(done * 100);
      row.dataset.done = String(percent);
      setText(row.querySelector(".done-percent"), percent + "%");
      setText(row.querySelector(".counts"), (total - pending) + " / " + total);
    }
    for (const [prefix, row] of rows) if (!seen.has(prefix)) row.remove();
  }

  function renderStream() {
    const canvas = $("task-stream");
    const now = Date.now() / 1000 + state.clockOffset;
    const t0 = now - WINDOW_S;
    // drop what scrolled out of the window
    let drop = 0;
    while (drop < state.stream.length && state.stream[drop].stop < t0 - 1) drop++;
    if (drop) state.stream.splice(0, drop);
    const workers = (state.workers || []).map((w) => w.address);
    const rowOf = new Map(workers.map((a, i) => [a, i]));
    for (const t of state.stream) {
      if (!rowOf.has(t.worker)) { rowOf.set(t.worker, rowOf.size); }
    }
    const nrows = Math.max(1, rowOf.size);
    const rowHeight = Math.max(4, Math.min(20, Math.floor(240 / nrows)));
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 800;
    const height = nrows * rowHeight + 16;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.height = height + "px";
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    // a margin on the left names each row's worker
    const left = rowHeight >= 9 ? LABEL_PX : 0;
    const scale = Math.max(100, width - left) / WINDOW_S;
    const colours = new Map();
    let drawn = 0;
    for (const t of state.stream) {
      if (t.stop < t0) continue;
      let c = colours.get(t.prefix);
      if (!c) { c = colour(t.prefix); colours.set(t.prefix, c); }
      ctx.fillStyle = t.erred ? ERRED_COLOUR : c;
      const x = left + (Math.max(t.start, t0) - t0) * scale;
      const w = Math.max(1, (t.stop - Math.max(t.start, t0)) * scale);
      ctx.fillRect(x, rowOf.get(t.worker) * rowHeight + 1, w, rowHeight - 2);
      drawn += t.n;
    }
    ctx.fillStyle = "#777";
    ctx.font = "10px sans-serif";
    for (let s = 0; s <= WINDOW_S; s += 5) {
      const x = left + (WINDOW_S - s) * scale;
      ctx.fillRect(Math.min(x, width - 1), height - 16, 1, 4);
      ctx.fillText(s === 0 ? "now" : "-" + s + " s", Math.max(left, Math.min(x - 10, width - 30)), height - 2);
    }
    if (left) {
      const names = new Map((state.workers || []).map((w) => [w.address, String(w.name)]));
      ctx.fillStyle = "#555";
      ctx.font = Math.min(11, rowHeight - 2) + "px sans-serif";
      ctx.textBaseline = "middle";
      for (const [address, row] of rowOf) {
        ctx.fillText(names.get(address) || address, 2, row * rowHeight + rowHeight / 2, left - 6);
      }
      ctx.textBaseline = "alphabetic";
    }
    canvas.dataset.tasks = String(drawn);
    renderStreamLegend(colours);
  }

  // the colour of each prefix drawn in the task stream, rebuilt only when the set changes
  function renderStreamLegend(colours) {
    const names = Array.from(colours.keys()).sort();
    const key = names.join("\n");
    const legend = $("stream-legend");
    if (legend.dataset.prefixes === key) return;
    legend.dataset.prefixes = key;
    legend.textContent = "";
    for (const name of names) {
      const chip = el("i");
      chip.style.background = colours.get(name);
      legend.appendChild(chip);
      legend.appendChild(document.createTextNode(name));
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
