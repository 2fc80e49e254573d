/* page.js: the operators' page of `rebuilder serve` (served at /page.js).
 *
 * Owns: the one polling loop (GET /api/sync/status every second while a run
 * runs, every 5 s otherwise; the runs and generations whenever something
 * changed, and every 30 s), the rendering of Now, the chart (inline SVG),
 * Runs, the run report, Generations and the comparison; the API token (in
 * sessionStorage only, sent as a bearer token with every request) and the
 * two actions (rebuild, rollback) behind a confirmation dialog.
 * API data reaches the DOM only through textContent and attributes. */
"use strict";
(function () {
  const PHASES = ["cleanup", "gmc_read", "tcs_merge", "gmc_only", "finish_load",
    "catch_up", "validate", "recommendation", "promote", "retention"];
  const MASTER_ALIASES = ["masterdoctorindex", "current_connections", "discrepancies"];
  const RECO_ALIASES = ["recommendations", "recommendationindex"];
  const FAST_MS = 1000;
  const SLOW_MS = 5000;
  const REFRESH_MS = 30000;
  const TOKEN_KEY = "rebuilder.apiToken";
  const NEED_TOKEN = "The token is required (or wrong): enter the API token above.";
  const READS_NEED_TOKEN = "Reads need the token: enter it above.";
  const REBUILD_TEXT = "Starts a full rebuild: builds new masterdoctorindex and recommendationindex " +
    "generations; when every gate passes, all five aliases move to them in one request.";

  const state = {
    status: null, runs: [], gens: null, cmp: null,
    selectedId: null, selectedRun: null, detailKey: "",
    changeKey: "", gensKey: "", optionsKey: "", refreshedAt: 0, memoryToken: "", acting: false, fastUntil: 0,
  };
  const poll = { busy: false, again: false, timer: 0 };
  const $ = (selector) => document.querySelector(selector);
  const numbers = new Intl.NumberFormat();
  const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

  /* ---- small helpers ---- */

  function el(tag, props, ...kids) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value == null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const kid of kids.flat()) if (kid != null) node.append(kid);
    return node;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text != null) node.textContent = text;
    return node;
  }

  const fmtNum = (n) => (typeof n === "number" && isFinite(n) ? numbers.format(n) : "—");
  const pad = (n) => String(n).padStart(2, "0");
  const written = (run) => (run && run.bulk ? (run.bulk.written || 0) + (run.bulk.superseded || 0) : 0);
  const rejectSum = (run) => Object.values((run && run.rejects) || {}).reduce((a, b) => a + b, 0);

  function fmtDuration(ms) {
    if (ms == null || !isFinite(ms) || ms < 0) return "—";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const total = Math.round(ms / 1000);
    const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    return h ? `${h} h ${pad(m)} min` : `${m} min ${pad(s)} s`;
  }

  function fmtTime(text) {
    const t = Date.parse(text);
    if (!text || isNaN(t)) return text || "—";
    return new Date(t).toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  const timeEl = (text) => (text ? el("time", { datetime: text, text: fmtTime(text) }) : "—");

  function fmtBytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n, i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return i === 0 ? `${n} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[i]}`;
  }

  function runDurationMs(run) {
    const start = Date.parse(run.startedAt);
    const end = run.endedAt ? Date.parse(run.endedAt) : (run.outcome === "running" ? Date.now() : NaN);
    return end - start;
  }

  /* Fills a <dl> with [term, description] pairs (empty descriptions skipped). */
  function fillDl(dl, pairs) {
    dl.replaceChildren(...pairs.filter((p) => p[1] != null && p[1] !== "")
      .flatMap(([term, value]) => [el("dt", { text: term }), el("dd", {}, value)]));
  }

  /* Re-renders inside container and gives focus back to the same control. */
  function keepFocus(container, render) {
    const active = document.activeElement;
    const key = active && container.contains(active) ? active.getAttribute("data-focus-key") : null;
    render();
    if (!key) return;
    const again = Array.from(container.querySelectorAll("[data-focus-key]"))
      .find((n) => n.getAttribute("data-focus-key") === key);
    if (again) again.focus();
  }

  /* Replaces only the rows that changed, so a click or focus elsewhere stays. */
  function syncRows(tbody, rows, keyAttr) {
    keepFocus(tbody, () => {
      const old = Array.from(tbody.rows);
      const same = old.length === rows.length &&
        old.every((r, i) => r.getAttribute(keyAttr) === rows[i].getAttribute(keyAttr));
      if (!same) { tbody.replaceChildren(...rows); return; }
      old.forEach((r, i) => { if (!r.isEqualNode(rows[i])) r.replaceWith(rows[i]); });
    });
  }

  /* ---- the token and the API ---- */

  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (_) { return state.memoryToken; }
  }

  function setToken(token) {
    state.memoryToken = token;
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage off: the token lives in memory until reload */ }
  }

  /* Never throws: { ok, status, body, code, message }. */
  async function api(path, init) {
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (init && init.body) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, Object.assign({ cache: "no-store" }, init, { headers }));
    } catch (e) {
      return { ok: false, status: 0, body: null, code: "", message: `Cannot reach the service: ${e.message || e}` };
    }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    const error = body && body.error;
    return {
      ok: response.ok, status: response.status, body,
      code: error ? error.code : "",
      message: error ? error.message : (response.ok ? "" : `The service answered HTTP ${response.status}.`),
    };
  }

  function readError(answer, what) {
    if (answer.status === 401) return READS_NEED_TOKEN;
    if (answer.status === 0) return answer.message;
    return `Cannot read ${what}: ${answer.message}`;
  }

  function showBanner(text) {
    const banner = $("#banner");
    if (banner.textContent !== text) banner.textContent = text;
    banner.hidden = !text;
  }

  /* ---- the polling loop: one cycle at a time ---- */

  function pollNow() {
    if (poll.busy) { poll.again = true; return; }
    clearTimeout(poll.timer);
    runCycle();
  }

  async function runCycle() {
    poll.busy = true;
    let delay = SLOW_MS;
    try {
      delay = await cycle();
    } catch (e) {
      showBanner(`The page could not show the service's answer: ${e.message || e}`);
    }
    poll.busy = false;
    if (poll.again) { poll.again = false; delay = 0; }
    if (delay != null) poll.timer = setTimeout(runCycle, document.hidden ? Math.max(delay, SLOW_MS) : delay);
  }

  /* One cycle; returns the delay to the next one (null: wait for a token). */
  async function cycle() {
    const status = await api("api/sync/status");
    if (!status.ok) {
      showBanner(readError(status, "the status"));
      $("#now-summary").textContent = "Unknown: the status could not be read.";
      return status.status === 401 ? null : SLOW_MS;
    }
    state.status = status.body;
    const run = status.body.run;
    const key = run ? [run._id, run.outcome, run.phase, (run.phases || []).length, run.endedAt].join("|") : "none";
    const errors = [];
    if (key !== state.changeKey || Date.now() - state.refreshedAt > REFRESH_MS) {
      await refreshLists(errors);
      if (!errors.length) { state.changeKey = key; state.refreshedAt = Date.now(); }
    }
    showBanner(errors.join(" "));
    renderNow();
    renderRuns();
    renderChart();
    refreshDetail();
    return status.body.running || Date.now() < state.fastUntil ? FAST_MS : SLOW_MS;
  }

  async function refreshLists(errors) {
    const runs = await api("api/runs?limit=20");
    if (runs.ok) state.runs = runs.body.runs || [];
    else errors.push(readError(runs, "the runs"));
    const gens = await api("api/generations");
    if (!gens.ok) { errors.push(readError(gens, "the generations")); return; }
    state.gens = gens.body;
    renderGenerations();
    renderRollbackOptions();
    const gensKey = [...state.gens.master, ...state.gens.recommendation]
      .map((g) => `${g.name}:${g.aliases.join(",")}`).join(";");
    if (gensKey === state.gensKey) return;
    const cmp = await api("api/generations/compare");
    if (!cmp.ok) { errors.push(readError(cmp, "the comparison")); return; }
    state.gensKey = gensKey;
    state.cmp = cmp.body;
    renderCompare();
  }

  /* ---- Now ---- */

  function nowSummary(s) {
    const run = s.run;
    if (!run) return "No run yet.";
    const options = [run.dryRun ? "dry run" : "", run.force ? "forced" : ""].filter(Boolean).join(", ");
    const how = `${run.trigger}${options ? `, ${options}` : ""}`;
    if (s.running) return `Run ${run._id} (${how}) is running since ${fmtTime(run.startedAt)}.`;
    if (run.outcome === "running") {
      return `Run ${run._id} is recorded as running but holds no lease: its process may have died (the next run marks it abandoned).`;
    }
    const error = run.error ? ` Error: ${run.error}` : "";
    return `No run in progress. Last run ${run._id} (${how}): ${run.outcome}, started ${fmtTime(run.startedAt)}, took ${fmtDuration(runDurationMs(run))}.${error}`;
  }

  function renderNow() {
    const s = state.status, run = s.run;
    $("#now-summary").textContent = nowSummary(s);
    $("#phase").textContent = s.running ? (run.phase || "between phases") : "no run in progress";
    renderSteps(run);
    const docs = $("#docs-written");
    docs.dataset.value = String(written(run));
    docs.textContent = fmtNum(written(run));
    $("#docs-label").textContent = s.running || !run ? "Documents written" : "Documents written (last run)";
    $("#rate").textContent = s.docsPerSec > 0
      ? `${fmtNum(Math.round(s.docsPerSec))} documents/s${s.running ? "" : " (last run, overall)"}` : "—";
    $("#eta").textContent = !s.running ? "—"
      : s.etaSecs != null ? `about ${fmtDuration(s.etaSecs * 1000)}` : "unknown (no earlier successful run to go by)";
    const next = s.nextScheduled;
    $("#next-scheduled").textContent = next
      ? `${fmtTime(next)} (in ${fmtDuration(Math.max(0, Date.parse(next) - Date.now()))})` : "none: the schedule is off";
    const rejects = Object.entries((run && run.rejects) || {}).sort((a, b) => b[1] - a[1]);
    $("#rejects").replaceChildren(...(rejects.length
      ? rejects.map(([reason, n]) => el("li", { text: `${reason}: ${fmtNum(n)}` }))
      : [el("li", { text: run ? "none" : "—" })]));
    fillDl($("#catch-up"), catchUpPairs(run && run.catchUp));
  }

  function catchUpPairs(c) {
    if (!c) return [["Catch-up", "—"]];
    return [
      ["Live applier active", c.applierActive ? "yes" : "no"],
      ["Changes replayed", fmtNum(c.replayed)],
      ["Rounds", fmtNum(c.rounds)],
      ["Backlog at the pause", fmtNum(c.backlogAtPause)],
      ["Applier paused", fmtDuration(c.pausedMs)],
      ["Replayed changes refused", fmtNum(c.failed)],
    ];
  }

  function renderSteps(run) {
    const records = new Map(((run && run.phases) || []).map((p) => [p.phase, p]));
    const live = run && run.outcome === "running";
    const items = PHASES.map((phase) => {
      const rec = records.get(phase);
      let st = "pending", note = live || !run ? "pending" : "not reached";
      if (rec && rec.durationMs != null) { st = "done"; note = `done, ${fmtDuration(rec.durationMs)}`; }
      else if (rec && live) {
        st = "current";
        note = `in progress, ${fmtDuration(Math.max(0, Date.now() - Date.parse(rec.startedAt)))} so far`;
      } else if (rec) { st = "done"; note = "started, not finished"; }
      return el("li", { "data-phase": phase, "data-state": st, "aria-current": st === "current" ? "step" : null },
        el("span", { class: "step-name", text: phase }), " ", el("span", { class: "step-note", text: note }));
    });
    $("#phase-steps").replaceChildren(...items);
  }

  /* ---- the chart ---- */

  function chartRun() {
    const live = state.status && state.status.run;
    if (!state.selectedId) return live || null;
    if (live && live._id === state.selectedId) return live;
    return state.selectedRun || state.runs.find((r) => r._id === state.selectedId) || live || null;
  }

  /* Run ids start with their UTC start time, so the older runs sort below. */
  const previousRun = (run) => state.runs.find((r) => r._id < run._id) || null;

  function curveOf(run) {
    const points = ((run && run.progress) || []).map((p) => ({ t: p.atMs / 1000, w: p.written }));
    if (points.length && points[0].t > 0) points.unshift({ t: 0, w: 0 });
    return points;
  }

  function phaseMarks(run) {
    const t0 = Date.parse(run.startedAt);
    return (run.phases || []).map((p) => {
      const t = Math.max(0, (Date.parse(p.startedAt) - t0) / 1000) || 0;
      return { phase: p.phase, t, end: t + (p.durationMs || 0) / 1000 };
    });
  }

  function niceCeil(v) {
    const e = Math.pow(10, Math.floor(Math.log10(v)));
    return [1, 2, 2.5, 5, 10].map((f) => f * e).find((x) => x >= v) || 10 * e;
  }

  function renderChart() {
    const run = chartRun(), prev = run ? previousRun(run) : null;
    const svg = $("#chart"), body = $("#chart-body");
    const W = Math.max(300, Math.floor(svg.parentNode.clientWidth || 720)), H = W < 520 ? 240 : 320;
    const M = { l: 58, r: 16, t: 14, b: 42 };
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    body.replaceChildren();
    $("#chart-follow").hidden = !state.selectedId;
    $("#legend-prev").textContent = prev ? `the run before it (${prev._id})` : "the run before it (none)";
    if (!run) {
      $("#chart-caption").textContent = "No run yet.";
      $("#chart-title").textContent = "Documents written over time: no run yet";
      $("#chart-desc").textContent = "Nothing to show.";
      return;
    }
    $("#chart-caption").textContent = run._id === state.selectedId
      ? `Run ${run._id} (${run.outcome}), chosen in Runs.` : `Run ${run._id} (${run.outcome}), the current or last run.`;
    const cur = curveOf(run), old = curveOf(prev), marks = phaseMarks(run);
    const lastT = (pts) => (pts.length ? pts[pts.length - 1].t : 0);
    const xMax = niceCeil(Math.max(1, lastT(cur), lastT(old), ...marks.map((m) => m.end)));
    const yMax = niceCeil(Math.max(10, ...cur.map((p) => p.w), ...old.map((p) => p.w)));
    const x = (t) => M.l + (t / xMax) * (W - M.l - M.r);
    const y = (w) => H - M.b - (w / yMax) * (H - M.t - M.b);
    drawAxes(body, { W, H, M, x, y, xMax, yMax, ticks: W < 520 ? 3 : 6 });
    let lastLabel = -Infinity;
    for (const m of marks) {
      const xx = x(m.t);
      body.append(svgEl("line", { class: "phase-line", x1: xx, x2: xx, y1: M.t, y2: H - M.b }));
      if (xx - lastLabel < 13) continue;
      lastLabel = xx;
      body.append(svgEl("text", { class: "phase-label", transform: `translate(${xx + 3},${M.t + 4}) rotate(90)` }, m.phase));
    }
    const line = (pts, cls) => svgEl("polyline", { class: cls,
      points: pts.map((p) => `${x(p.t).toFixed(1)},${y(p.w).toFixed(1)}`).join(" ") });
    if (old.length) body.append(line(old, "curve prev"));
    if (cur.length) body.append(line(cur, "curve"));
    else body.append(svgEl("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, "No progress recorded yet."));
    $("#chart-title").textContent = `Documents written over time by run ${run._id}`;
    $("#chart-desc").textContent = chartText(run, cur, prev, old, marks);
  }

  function drawAxes(body, a) {
    const { W, H, M, x, y, xMax, yMax, ticks } = a;
    for (let i = 0; i <= ticks; i += 1) {
      const t = (xMax * i) / ticks, label = xMax < 10 ? t.toFixed(1) : fmtNum(Math.round(t));
      body.append(svgEl("line", { class: "tick-line", x1: x(t), x2: x(t), y1: H - M.b, y2: H - M.b + 5 }));
      body.append(svgEl("text", { class: "tick", x: x(t), y: H - M.b + 17, "text-anchor": "middle" }, label));
    }
    for (let i = 0; i <= 4; i += 1) {
      const w = (yMax * i) / 4;
      body.append(svgEl("line", { class: "grid", x1: M.l, x2: W - M.r, y1: y(w), y2: y(w) }));
      body.append(svgEl("text", { class: "tick", x: M.l - 6, y: y(w) + 4, "text-anchor": "end" }, compact.format(w)));
    }
    body.append(svgEl("line", { class: "axis", x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }));
    body.append(svgEl("line", { class: "axis", x1: M.l, x2: M.l, y1: M.t, y2: H - M.b }));
    body.append(svgEl("text", { class: "axis-label", x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle" },
      "seconds since the run started"));
    body.append(svgEl("text", { class: "axis-label", "text-anchor": "middle",
      transform: `translate(13,${(M.t + H - M.b) / 2}) rotate(-90)` }, "documents written"));
  }

  function chartText(run, cur, prev, old, marks) {
    const end = (pts) => (pts.length ? pts[pts.length - 1] : { t: 0, w: 0 });
    const phases = marks.map((m) => `${m.phase} at ${Math.round(m.t)} s`).join(", ");
    let text = `Run ${run._id} (${run.outcome}): ${fmtNum(end(cur).w)} documents written in ${Math.round(end(cur).t)} s.`;
    if (phases) text += ` Phases started: ${phases}.`;
    if (prev) text += ` The run before it, ${prev._id} (${prev.outcome}): ${fmtNum(end(old).w)} documents in ${Math.round(end(old).t)} s.`;
    return text;
  }

  /* ---- Runs and the run report ---- */

  function runRow(r) {
    const chosen = r._id === state.selectedId;
    return el("tr", { "data-run-id": r._id, class: chosen ? "selected" : null, "aria-current": chosen ? "true" : null },
      el("th", { scope: "row" }, el("button", { type: "button", class: "link", "data-focus-key": `run:${r._id}`,
        "aria-label": `Open the report of run ${r._id}`, onclick: () => openRun(r._id) }, r._id)),
      el("td", { text: r.trigger }),
      el("td", {}, timeEl(r.startedAt)),
      el("td", { text: fmtDuration(runDurationMs(r)) }),
      el("td", { class: `outcome outcome-${r.outcome}`, text: r.outcome }),
      el("td", { class: "num", text: fmtNum(written(r)) }),
      el("td", { class: "num", text: fmtNum(rejectSum(r)) }));
  }

  function renderRuns() {
    const live = state.status && state.status.run;
    const runs = state.runs.map((r) => (live && r._id === live._id ? live : r));
    const rows = runs.length ? runs.map(runRow)
      : [el("tr", {}, el("td", { colspan: 7, text: "No runs yet." }))];
    syncRows($("#runs tbody"), rows, "data-run-id");
  }

  async function openRun(id) {
    state.selectedId = id;
    state.selectedRun = state.runs.find((r) => r._id === id) || null;
    state.detailKey = "";
    const box = $("#run-detail");
    box.hidden = false;
    box.replaceChildren(el("p", { text: `Loading run ${id}…` }));
    box.focus();
    renderRuns();
    renderChart();
    const answer = await api(`api/runs/${encodeURIComponent(id)}`);
    if (state.selectedId !== id) return;
    if (!answer.ok) {
      box.replaceChildren(el("h3", { text: `Run ${id}` }),
        el("p", { text: readError(answer, `run ${id}`) }), closeButton());
      return;
    }
    state.selectedRun = answer.body;
    renderRunDetail(answer.body);
    renderChart();
  }

  function closeRun(focusRow) {
    const id = state.selectedId;
    state.selectedId = null;
    state.selectedRun = null;
    $("#run-detail").hidden = true;
    renderRuns();
    renderChart();
    const button = Array.from(document.querySelectorAll("#runs [data-focus-key]"))
      .find((n) => n.getAttribute("data-focus-key") === `run:${id}`);
    if (focusRow) (button || $("#runs-h")).focus();
    else $("#chart-caption").focus();
  }

  const closeButton = () => el("button", { type: "button", id: "close-run", "data-focus-key": "close-run",
    onclick: () => closeRun(true) }, "Close the report");

  /* While the chosen run runs, its report follows the status. */
  function refreshDetail() {
    const live = state.status && state.status.run;
    if (state.selectedId && live && live._id === state.selectedId && state.detailKey !== live.updatedAt) {
      state.selectedRun = live;
      renderRunDetail(live);
    }
  }

  function promotionText(p) {
    if (!p) return "";
    const moves = describeMoves(p.aliases);
    return `${p.kind}: master ${p.master.from || "(none)"} → ${p.master.to}, recommendation ` +
      `${p.recommendation.from || "(none)"} → ${p.recommendation.to}, in ${fmtDuration(p.took_ms)}.${moves ? ` ${moves}` : ""}`;
  }

  function renderRunDetail(run) {
    const box = $("#run-detail");
    const wasOpen = Boolean(box.querySelector("details[open]"));
    state.detailKey = run.updatedAt;
    const b = run.bulk || {};
    const summary = el("dl", { class: "figures" });
    fillDl(summary, [
      ["Outcome", run.outcome], ["Error", run.error || ""], ["Trigger", run.trigger],
      ["Options", [run.dryRun ? "dry run" : "", run.force ? "force" : ""].filter(Boolean).join(", ") || "none"],
      ["Host", `${run.host || "?"} (pid ${run.pid})`],
      ["Started", timeEl(run.startedAt)], ["Ended", run.endedAt ? timeEl(run.endedAt) : "not yet"],
      ["Duration", fmtDuration(runDurationMs(run))],
      ["Documents written", `${fmtNum(written(run))} of ${fmtNum((run.counts || {}).docsExpected)} expected`],
      ["Bulk writer", `${fmtNum(b.written)} written, ${fmtNum(b.superseded)} superseded, ${fmtNum(b.failed)} failed, ` +
        `${fmtNum(b.retriedItems)} retried, ${fmtNum(b.requests)} requests, ${fmtNum(b.throttled429)} throttled (429)`],
      ["Rejects", Object.entries(run.rejects || {}).map(([k, n]) => `${k}: ${fmtNum(n)}`).join(", ") || "none"],
      ["Catch-up", catchUpPairs(run.catchUp).map(([k, v]) => `${k}: ${v}`).join("; ")],
      ["Generations built", (run.generations || []).join(", ") || "none"],
      ["Promotion", promotionText(run.promotion) || "none"],
      ["Orphans deleted", (run.orphansDeleted || []).join(", ")],
      ["Retention deleted", (run.retentionDeleted || []).join(", ")],
    ]);
    const counts = el("dl", { class: "figures" });
    fillDl(counts, Object.entries(run.counts || {}).map(([k, n]) => [k, fmtNum(n)]));
    const gates = (run.gates || []).map((g) => el("li", {
      text: `${g.name}: ${g.passed ? "passed" : g.overridden ? "failed, overridden by --force" : "FAILED"}${g.detail ? ` (${g.detail})` : ""}`,
      class: g.passed ? "ok" : "bad" }));
    const phases = (run.phases || []).map((p) => el("li", {
      text: `${p.phase}: started ${fmtTime(p.startedAt)}, ${p.durationMs != null ? fmtDuration(p.durationMs) : "not finished"}` }));
    const json = el("details", { open: wasOpen }, el("summary", { "data-focus-key": "json", text: "The full report (JSON)" }),
      el("pre", { text: JSON.stringify(run, null, 2) }));
    keepFocus(box, () => box.replaceChildren(el("h3", { text: `Run ${run._id}` }), summary,
      el("h4", { text: "Phases" }), el("ol", { class: "plain" }, phases.length ? phases : el("li", { text: "none yet" })),
      el("h4", { text: "Gates" }), el("ul", { class: "plain" }, gates.length ? gates : el("li", { text: "not validated" })),
      el("h4", { text: "Counts" }), counts, json, closeButton()));
  }

  /* ---- Generations and the comparison ---- */

  function genState(g) {
    const m = g.meta;
    if (!m) return "no rebuilder meta";
    return [m.state, m.served_at ? `served since ${fmtTime(m.served_at)}` : "never served",
      m.built_from ? `from ${m.built_from}` : ""].filter(Boolean).join("; ");
  }

  function genRow(g) {
    const runId = g.meta && g.meta.run_id;
    return el("tr", { "data-generation": g.name, class: g.aliases.length ? "live" : null },
      el("td", { text: g.family }),
      el("th", { scope: "row", text: g.name }),
      el("td", {}, timeEl(g.created)),
      el("td", { class: "num", text: fmtNum(g.docs) }),
      el("td", { class: "num", text: fmtBytes(g.size_bytes) }),
      el("td", { text: genState(g) }),
      el("td", { class: "aliases", text: g.aliases.join(", ") }),
      el("td", {}, runId ? el("button", { type: "button", class: "link", "data-focus-key": `gen-run:${g.name}`,
        "aria-label": `Open the report of run ${runId}`, onclick: () => openRun(runId) }, runId) : "—"));
  }

  function renderGenerations() {
    const g = state.gens;
    const list = [...g.master.slice().reverse(), ...g.recommendation.slice().reverse()];
    const rows = list.length ? list.map(genRow)
      : [el("tr", {}, el("td", { colspan: 8, text: "No generations yet." }))];
    syncRows($("#generations tbody"), rows, "data-generation");
  }

  function compareTable(title, a, b, field) {
    const left = (a && a[field]) || {}, right = (b && b[field]) || {};
    const keys = Array.from(new Set([...Object.keys(left), ...Object.keys(right)])).sort();
    const cell = (n) => el("td", { class: "num", text: n == null ? "—" : fmtNum(n) });
    const diff = (l, r) => {
      if (l == null || r == null) return el("td", { class: "num", text: "—" });
      const d = l - r;
      return el("td", { class: `num ${d < 0 ? "neg" : d > 0 ? "pos" : ""}`, text: d > 0 ? `+${fmtNum(d)}` : d < 0 ? `−${fmtNum(-d)}` : "0" });
    };
    const row = (key, l, r, scope) => el("tr", {}, el("th", { scope, text: key }), cell(l), cell(r), diff(l, r));
    const body = keys.map((k) => row(k, a ? left[k] || 0 : null, b ? right[k] || 0 : null, "row"));
    const foot = field === "byAlias" ? null
      : el("tfoot", {}, row("All documents", a ? a.total : null, b ? b.total : null, "row"));
    return el("div", { class: "table-wrap", role: "region", "aria-label": title, tabindex: "0" },
      el("table", { class: "compare" }, el("caption", { text: title }),
        el("thead", {}, el("tr", {}, el("th", { scope: "col", text: field === "byAlias" ? "Alias" : "Designated body" }),
          el("th", { scope: "col", class: "num", text: "Live" }), el("th", { scope: "col", class: "num", text: "Previous" }),
          el("th", { scope: "col", class: "num", text: "Difference" }))),
        el("tbody", {}, body.length ? body : el("tr", {}, el("td", { colspan: 4, text: "none" }))), foot));
  }

  function renderCompare() {
    const box = $("#compare"), a = state.cmp.generation, b = state.cmp.against;
    if (!a && !b) { box.replaceChildren(el("p", { text: "Nothing is live yet: there is nothing to compare." })); return; }
    const other = Math.max((a && a.otherBodies) || 0, (b && b.otherBodies) || 0);
    box.replaceChildren(...[
      el("p", { text: `Live: ${a ? `${a.index} (${fmtNum(a.total)} documents)` : "none"}; previous: ` +
        `${b ? `${b.index} (${fmtNum(b.total)} documents)` : "none retained"}. Difference = live − previous.` }),
      other ? el("p", { text: `${fmtNum(other)} documents are in bodies beyond the first 1,000 and not listed.` }) : null,
      compareTable("Documents by GMC designated body (designatedBody)", a, b, "byDesignatedBody"),
      compareTable("Documents by TCS designated body (tcsDesignatedBody)", a, b, "byTcsDesignatedBody"),
      compareTable("Documents each alias serves", a, b, "byAlias")].filter(Boolean));
  }

  /* ---- Rollback: what would move (the default is the service's own
     choice, from /api/generations; a chosen generation goes with its pair) ---- */

  const wasServed = (g) => g.aliases.length > 0 || Boolean(g.meta && g.meta.served_at);
  const newest = (names) => names.sort().pop();
  const liveOf = (list) => list.filter((g) => g.aliases.length).pop() || null;

  function rollbackPlan(to) {
    const { master, recommendation, rollback } = state.gens || { master: [], recommendation: [], rollback: {} };
    const liveM = liveOf(master), liveR = liveOf(recommendation);
    if (!to) {
      const plan = rollback || {};
      return { liveM, liveR, targetM: plan.master || undefined, targetR: plan.recommendation || undefined };
    }
    const isReady = (g) => Boolean(g.meta && g.meta.state === "ready");
    const targetR = newest(recommendation.filter((g) => isReady(g) && g.meta.built_from === to).map((g) => g.name));
    return { liveM, liveR, targetM: to, targetR };
  }

  function rollbackText(to) {
    const p = rollbackPlan(to);
    const mAliases = (p.liveM ? p.liveM.aliases : MASTER_ALIASES).join(", ");
    const rAliases = (p.liveR ? p.liveR.aliases : RECO_ALIASES).join(", ");
    const fromM = p.liveM ? p.liveM.name : "no generation", fromR = p.liveR ? p.liveR.name : "no generation";
    if (!p.targetM) {
      return `Asks the service to move every alias back to the previous served generation, but none older than ${fromM} ` +
        "appears to be retained: the service will most likely refuse, and nothing will move.";
    }
    const reco = p.targetR ? `and ${rAliases} from ${fromR} to ${p.targetR}`
      : `and ${rAliases} to a recommendation generation built from ${p.targetM} (none appears to be retained: the service will likely refuse)`;
    return `Moves ${mAliases} from ${fromM} to ${p.targetM}, ${reco}, in one request.`;
  }

  function renderRollbackOptions() {
    const select = $("#rollback-target"), p = rollbackPlan(null);
    const names = state.gens.master.map((g) => g.name).reverse();
    const key = `${names.join(",")}|${p.targetM}|${p.liveM && p.liveM.name}`;
    if (key === state.optionsKey) return;
    state.optionsKey = key;
    const keep = select.value;
    const options = [el("option", { value: "", text: `the previous generation (${p.targetM || "none retained"})` })];
    for (const g of state.gens.master.slice().reverse()) {
      const notes = [p.liveM && g.name === p.liveM.name ? "live" : "", wasServed(g) ? "" : "never served"].filter(Boolean);
      options.push(el("option", { value: g.name, text: notes.length ? `${g.name} (${notes.join(", ")})` : g.name }));
    }
    select.replaceChildren(...options);
    select.value = names.includes(keep) ? keep : "";
  }

  function describeMoves(moves) {
    const groups = new Map();
    for (const m of moves || []) {
      const key = `${(m.from || []).join(", ") || "nothing"}\u0000${m.to}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(m.alias);
    }
    return Array.from(groups, ([key, aliases]) => {
      const [from, to] = key.split("\u0000");
      return `${aliases.join(", ")} moved from ${from} to ${to}.`;
    }).join(" ");
  }

  /* ---- the actions ---- */

  function say(text) { $("#action-result").textContent = text; }

  /* While an action is in flight the buttons say so (and keep their focus);
     #action-result only ever holds an answer. */
  function setBusy(busy) {
    state.acting = busy;
    for (const id of ["#rebuild", "#rollback"]) $(id).setAttribute("aria-disabled", String(busy));
  }

  /* The confirmation dialog: resolves true on Confirm; focus returns to the opener. */
  function ask(title, text) {
    const dialog = $("#confirm-dialog");
    if (typeof dialog.showModal !== "function") return Promise.resolve(window.confirm(`${title}\n\n${text}`));
    const opener = document.activeElement;
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        resolve(dialog.returnValue === "confirm");
        if (opener && typeof opener.focus === "function") opener.focus();
      }, { once: true });
      dialog.showModal();
      $("#cancel").focus();
    });
  }

  async function rebuild() {
    if (state.acting || !(await ask("Rebuild now?", REBUILD_TEXT))) return;
    setBusy(true);
    const r = await api("api/sync", { method: "POST" });
    setBusy(false);
    if (r.status === 202) say(`Run ${r.body.runId} started.`);
    else if (r.status === 409 && r.code === "run_in_progress") say(inProgress(r));
    else if (r.status === 401) say(`${NEED_TOKEN} Nothing was started.`);
    else say(r.message || `The service answered HTTP ${r.status}.`);
    if (r.status === 202) { state.changeKey = ""; state.fastUntil = Date.now() + 15000; pollNow(); }
  }

  function inProgress(r) {
    const id = r.body && r.body.error && r.body.error.runId;
    return id ? `A run is already running: ${id}.` : "A run is already running.";
  }

  async function rollback() {
    const to = $("#rollback-target").value;
    if (state.acting || !(await ask("Roll back?", rollbackText(to || null)))) return;
    setBusy(true);
    const r = await api("api/rollback", to ? { method: "POST", body: JSON.stringify({ to }) } : { method: "POST" });
    setBusy(false);
    if (r.status === 200 && r.body) {
      const moves = describeMoves(r.body.aliases);
      say(`Rolled back in ${fmtDuration(r.body.took_ms)}: ${moves || `master now ${r.body.master.to}, recommendation now ${r.body.recommendation.to}.`}`);
      state.changeKey = "";
      state.gensKey = "";
      pollNow();
    } else if (r.status === 409 && r.code === "run_in_progress") say(`${inProgress(r)} Nothing moved.`);
    else if (r.status === 401) say(`${NEED_TOKEN} Nothing moved.`);
    else say(r.message || `The service answered HTTP ${r.status}.`);
  }

  function saveToken(event) {
    event.preventDefault();
    const token = $("#token").value.trim();
    if (!/^[\x21-\x7e]*$/.test(token)) { $("#token-note").textContent = "A token holds printable ASCII characters only."; return; }
    setToken(token);
    $("#token-note").textContent = token ? "Saved for this browser session." : "No token set.";
    state.changeKey = "";
    state.gensKey = "";
    pollNow();
  }

  function forgetToken() {
    setToken("");
    $("#token").value = "";
    $("#token-note").textContent = "Forgotten: no token set.";
    pollNow();
  }

  function start() {
    $("#token").value = getToken();
    if (getToken()) $("#token-note").textContent = "A token is set for this browser session.";
    $("#token-form").addEventListener("submit", saveToken);
    $("#forget-token").addEventListener("click", forgetToken);
    $("#rebuild").addEventListener("click", rebuild);
    $("#rollback").addEventListener("click", rollback);
    $("#confirm").addEventListener("click", () => $("#confirm-dialog").close("confirm"));
    $("#cancel").addEventListener("click", () => $("#confirm-dialog").close("cancel"));
    $("#chart-follow").addEventListener("click", () => closeRun(false));
    let resize = 0;
    window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(renderChart, 150); });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) pollNow(); });
    renderSteps(null);
    pollNow();
  }

  start();
})();
