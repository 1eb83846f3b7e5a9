// The queue page. One EventSource on /v1/queue/events; every event carries the whole
// state (see serve/page.py), so the page is right again after any reconnect. Rows are
// kept by key and moved, not rebuilt, so focus stays where the keyboard left it.
"use strict";

const STREAM = "/v1/queue/events";
const MAX_RETRY_MS = 15000;

let source = null;
let retryMs = 1000;
// The last event, the server's clock at it and when it arrived here: ages and ETAs
// move on between events by this page's own clock, without asking the server.
let last = null;

function $(id) {
  return document.getElementById(id);
}

function text(node, value) {
  if (node.textContent !== value) node.textContent = value;
}

function seconds(value) {
  if (value === null || value === undefined) return "—";
  const s = Math.max(0, value);
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function count(n) {
  return n.toLocaleString("en");
}

// Make `parent`'s children match `items` in order: one element per key, made once.
function reconcile(parent, items, keyOf, make, update) {
  const old = new Map();
  for (const child of parent.children) old.set(child.dataset.key, child);
  let cursor = parent.firstElementChild;
  for (const item of items) {
    const key = keyOf(item);
    let node = old.get(key);
    if (node) old.delete(key);
    else {
      node = make(item);
      node.dataset.key = key;
    }
    update(node, item);
    if (node === cursor) cursor = cursor.nextElementSibling;
    else parent.insertBefore(node, cursor);
  }
  for (const node of old.values()) node.remove();
}

function cells(row, n) {
  while (row.cells.length < n) row.insertCell();
  return row.cells;
}

// -- groups -------------------------------------------------------------------

function limitText(g) {
  const parts = [g.limit === null ? "no slot limit" : `${g.limit} slot${g.limit === 1 ? "" : "s"}`];
  if (g.rpm !== null) parts.push(`${count(g.rpm)} rpm`);
  if (g.tpm !== null) parts.push(`${count(g.tpm)} tpm`);
  if (g.learnedRpm !== null) parts.push(`${count(g.learnedRpm)} rpm learned from 429s`);
  return parts.join(" · ");
}

function figures(g) {
  const list = [
    ["limit", limitText(g)],
    ["held", count(g.active)],
    ["waiting", count(g.pending)],
    ["wait p50 / p95", `${seconds(g.waitP50Seconds)} / ${seconds(g.waitP95Seconds)}`],
  ];
  if (g.pausedSeconds > 0) list.push(["paused", `${seconds(g.pausedSeconds)} (a 429)`]);
  // Its server is down: no grants here until then, then one call, the probe (see
  // actors/engine.py, mark_out).
  if (g.probing) list.push(["probing", `one call let in after: ${g.outReason}`]);
  else if (g.outReason) list.push(["out of rotation", `${seconds(g.outSeconds)} more: ${g.outReason}`]);
  return list;
}

function sparkline(svg, held, waiting, stepSeconds) {
  const top = Math.max(1, ...held, ...waiting);
  const points = (values) =>
    values
      .map((v, i) => `${((i / (values.length - 1)) * 120).toFixed(1)},${(27 - (v / top) * 26).toFixed(1)}`)
      .join(" ");
  svg.querySelector(".held").setAttribute("points", points(held));
  svg.querySelector(".waiting").setAttribute("points", points(waiting));
  const minutes = Math.round((held.length * stepSeconds) / 60);
  svg.setAttribute(
    "aria-label",
    `last ${minutes} minutes: at most ${Math.max(...held)} held and ${Math.max(...waiting)} waiting`,
  );
}

function makeGroup() {
  return $("group-template").content.firstElementChild.cloneNode(true);
}

function updateGroup(node, [id, g, activity, stepSeconds]) {
  node.dataset.group = id;
  text(node.querySelector(".group-name"), id);
  text(node.querySelector(".kind"), g.kind);
  sparkline(node.querySelector(".spark"), activity.heldHistory, activity.waitingHistory, stepSeconds);
  reconcile(
    node.querySelector(".figures"),
    figures(g),
    ([name]) => name,
    () => {
      const div = document.createElement("div");
      div.append(document.createElement("dt"), document.createElement("dd"));
      return div;
    },
    (div, [name, value]) => {
      div.dataset.name = name;
      text(div.children[0], name);
      text(div.children[1], value);
    },
  );
  const flows = node.querySelector(".flows");
  const serving = Object.entries(g.flows).filter(([, f]) => f.waiting || f.running);
  flows.hidden = serving.length === 0;
  reconcile(flows.tBodies[0], serving, ([flow]) => flow, makeFlow, updateFlow);
  const shown = activity.waiting.length;
  const table = node.querySelector(".waiters");
  table.hidden = shown === 0;
  reconcile(table.tBodies[0], activity.waiting, (w) => w.requestId, makeWaiter, updateWaiter);
  const more = g.pending - shown;
  text(node.querySelector(".more"), more > 0 ? `and ${count(more)} more waiting (${count(g.pending)} in all)` : "");
}

// A flow is a tenant ("tenant:NAME") or, for a driver's calls, its Ray job ("job:ID");
// "others" sums the flows this reader's tenant does not see by name.
function who(flow) {
  if (flow === "others") return "everyone else";
  const [kind, ...name] = flow.split(":");
  return name.length ? `${kind} ${name.join(":")}` : flow || "—";
}

function makeFlow() {
  const row = document.createElement("tr");
  cells(row, 6);
  return row;
}

function updateFlow(row, [flow, f]) {
  const [name, waiting, running, served, service, share] = row.cells;
  row.dataset.flow = flow;
  text(name, who(flow));
  text(waiting, count(f.waiting));
  text(running, count(f.running));
  text(served, seconds(f.servedSeconds));
  text(service, count(Math.round(f.service)));
  text(share, `${Math.round(f.share * 100)}%`);
}

function makeWaiter() {
  const row = document.createElement("tr");
  cells(row, 6);
  row.cells[2].dataset.age = "";
  row.cells[5].dataset.eta = "";
  return row;
}

function updateWaiter(row, w) {
  const [position, priority, age, who, request, eta] = row.cells;
  row.dataset.requestId = w.requestId;
  text(position, String(w.position));
  text(priority, String(w.priority));
  age.dataset.at = String(w.waitedSeconds);
  eta.dataset.at = w.estimatedWaitSeconds === null ? "" : String(w.estimatedWaitSeconds);
  const asked = [w.run && `run ${w.run}`, w.serviceId, w.stage].filter(Boolean).join(" · ");
  // Another tenant's call, shown without its names (see serve/tenants.py).
  text(who, w.flow === "others" ? "another tenant's" : asked || "—");
  text(request, w.requestId);
}

// -- pools and fallbacks ------------------------------------------------------

function makeModel() {
  const row = document.createElement("tr");
  cells(row, 4);
  return row;
}

function serverText(id, g) {
  if (!g) return id;
  const state = g.probing ? "probing" : g.outReason ? `out ${seconds(g.outSeconds)}: ${g.outReason}` : "in rotation";
  return `${id}: ${count(g.granted)} granted, ${count(g.active)} held · ${state}`;
}

function updateModel(row, [id, m, groups]) {
  const [model, servers, fallbacks, fell] = row.cells;
  row.dataset.model = id;
  text(model, id);
  text(servers, m.groups.map((g) => serverText(g, groups[g])).join("\n"));
  const after = m.fallbackAfterSeconds === null ? "" : ` (after ${seconds(m.fallbackAfterSeconds)})`;
  text(fallbacks, m.fallbacks.length ? m.fallbacks.join(", ") + after : "—");
  const taken = Object.entries(m.fallbacksTaken).map(
    ([to, why]) => `${to}: ${Object.entries(why).map(([reason, n]) => `${count(n)} ${reason}`).join(", ")}`,
  );
  text(fell, taken.length ? taken.join("\n") : m.fallbacks.length ? "none" : "—");
}

// -- runs ---------------------------------------------------------------------

function makeRun() {
  const row = document.createElement("tr");
  cells(row, 7);
  row.cells[4].dataset.until = "";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "cancel";
  button.textContent = "Cancel…";
  button.addEventListener("click", () => confirmCancel(row.dataset.runId, button));
  row.cells[6].append(button);
  return row;
}

function updateRun(row, run) {
  const [id, state, progress, calls, eta, failed, action] = row.cells;
  row.dataset.runId = run.id;
  row.dataset.state = run.state;
  text(id, run.id);
  text(state, run.error ? `${run.state}: ${run.error}` : run.state);
  const stages = Object.entries(run.stages);
  reconcile(
    progress,
    stages,
    ([stage]) => stage,
    ([stage]) => {
      const label = document.createElement("label");
      label.className = "stage";
      label.append(document.createElement("span"), document.createElement("progress"), document.createElement("span"));
      label.children[0].textContent = stage;
      return label;
    },
    (label, [, p]) => {
      const bar = label.children[1];
      bar.max = Math.max(1, p.total);
      bar.value = p.done;
      text(label.children[2], `${count(p.done)}/${count(p.total)}`);
    },
  );
  const done = stages.reduce((sum, [, p]) => sum + p.done, 0);
  const total = stages.reduce((sum, [, p]) => sum + p.total, 0);
  text(calls, `${count(done)} / ${count(total - done)}`);
  eta.dataset.until = run.estimated_completion_at === null ? "" : String(run.estimated_completion_at);
  text(failed, String(run.failed_services));
  action.querySelector("button").hidden = run.state !== "running";
}

// -- schedules ----------------------------------------------------------------

function makeSchedule() {
  const row = document.createElement("tr");
  cells(row, 7);
  row.cells[4].dataset.until = "";
  return row;
}

function updateSchedule(row, s) {
  const [name, tenant, cron, lastRun, next, job, skipped] = row.cells;
  text(name, s.name);
  text(tenant, s.tenant);
  text(cron, s.cron);
  const ran = s.last_run_at === null ? "not yet" : new Date(s.last_run_at * 1000).toISOString();
  text(lastRun, s.last_error ? `${ran}: ${s.last_error}` : ran);
  next.dataset.until = String(s.next_run_at);
  text(job, s.last_job ?? "—");
  text(skipped, String(s.skipped));
}

function confirmCancel(runId, button) {
  const dialog = $("confirm");
  text($("confirm-run"), runId);
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    async () => {
      button.focus();
      if (dialog.returnValue !== "cancel") return;
      button.disabled = true;
      const answer = await fetch(`/v1/pipelines/${encodeURIComponent(runId)}`, {
        method: "DELETE",
        headers: { "X-Raygate-Page": "1" },
      });
      button.disabled = false;
      const body = await answer.json().catch(() => ({}));
      text($("notice"), answer.ok ? `Run ${runId}: ${body.state}.` : `Run ${runId} not cancelled: ${body.error?.message ?? answer.status}`);
    },
    { once: true },
  );
  dialog.showModal();
}

// -- the stream ---------------------------------------------------------------

function render(state) {
  const queue = state.queue;
  last = { serverNow: state.now, arrived: performance.now() };
  const ids = Object.keys(queue.stats.groups).sort((a, b) => {
    const pa = queue.stats.groups[a].pending;
    const pb = queue.stats.groups[b].pending;
    return pb - pa || a.localeCompare(b);
  });
  const groups = ids.map((id) => [id, queue.stats.groups[id], queue.groups[id], queue.stepSeconds]);
  reconcile($("groups"), groups, ([id]) => id, makeGroup, updateGroup);
  text(
    $("totals"),
    ids.length ? `${count(queue.stats.totalActive)} held, ${count(queue.stats.totalPending)} waiting` : "No group has had a call yet.",
  );
  const models = Object.keys(queue.stats.models).sort().map((id) => [id, queue.stats.models[id], queue.stats.groups]);
  reconcile($("models").tBodies[0], models, ([id]) => id, makeModel, updateModel);
  $("models-section").hidden = models.length === 0;
  reconcile($("runs").tBodies[0], state.runs, (run) => run.id, makeRun, updateRun);
  $("runs").hidden = state.runs.length === 0;
  $("no-runs").hidden = state.runs.length > 0;
  reconcile($("schedules").tBodies[0], state.schedules, (s) => s.name, makeSchedule, updateSchedule);
  $("schedules-section").hidden = state.schedules.length === 0;
  tick();
}

// Ages count up and ETAs down between events.
function tick() {
  if (last === null) return;
  const elapsed = (performance.now() - last.arrived) / 1000;
  for (const cell of document.querySelectorAll("[data-age]")) {
    text(cell, seconds(Number(cell.dataset.at) + elapsed));
  }
  for (const cell of document.querySelectorAll("[data-eta]")) {
    text(cell, cell.dataset.at === "" ? "—" : countdown(Number(cell.dataset.at) - elapsed));
  }
  for (const cell of document.querySelectorAll("[data-until]")) {
    const until = cell.dataset.until;
    text(cell, until === "" ? "—" : countdown(Number(until) - last.serverNow - elapsed));
  }
}

// An estimate that ran out says so, rather than "in 0 s" for ever.
function countdown(left) {
  return left > 0 ? `in ${seconds(left)}` : "due now";
}

function setStatus(state, words) {
  const status = $("status");
  status.dataset.state = state;
  text(status, words);
}

function connect() {
  source = new EventSource(STREAM);
  source.addEventListener("state", (event) => {
    retryMs = 1000;
    setStatus("live", "live");
    render(JSON.parse(event.data));
  });
  source.addEventListener("error", () => {
    setStatus("reconnecting", "reconnecting…");
    // The browser retries by itself unless the answer was not a stream (a 401, a 503
    // while a replica restarts): then this page does, and a lost session signs in again.
    if (source.readyState !== EventSource.CLOSED) return;
    source.close();
    fetch("/v1/queue").then((answer) => {
      if (answer.status === 401) window.location.assign("/");
    }, () => {});
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
  });
}

connect();
setInterval(tick, 1000);
