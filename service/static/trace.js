// Live trace of one Markovian RSA run, drawn from its progress events (no dependencies).
//
// Sources: the form starts POST /v1/chat/completions with stream: true and reads the SSE
// chunks (progress rides in chunks' `rsa` field, the final answer in content deltas);
// ?run=<id> follows a background run's GET /v1/rsa/runs/<id>/events (bare progress dicts).
// Rounds are columns, nodes boxes coloured by extracted answer, edges go to the K parents.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#86bcb6"];
const DARK_TEXT = new Set(["#edc948", "#ff9da7", "#86bcb6", "#76b7b2", "#f28e2b"]);
const NO_ANSWER = "#d9dde3";
const BOX_W = 132, BOX_H = 46, COL_W = 176, ROW_H = 60, PAD = 34;

let state = freshState();
let pending = false;
let abortController = null;

function freshState() {
  return { population: 0, k: 0, rounds: 0, seed: null, nodes: new Map(), colors: new Map(),
           final: null, finalText: "", phase: "idle" };
}

const $ = (id) => document.getElementById(id);

function answerKey(answer) {
  if (answer === null || answer === undefined) return null;
  let s = String(answer).replace(/\$/g, "").replace(/\\text\{([^{}]*)\}/g, "$1").replace(/\s+/g, "").toLowerCase();
  s = s.replace(/\.$/, "");
  if (/^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$/.test(s)) s = s.replace(/,/g, "");
  if (/^[+-]?(\d+\.?\d*|\.\d+)$/.test(s)) s = String(Number(s));
  return s || null;
}

function colorOf(answer) {
  const key = answerKey(answer);
  if (key === null) return NO_ANSWER;
  if (!state.colors.has(key)) state.colors.set(key, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(key);
}

function node(r, i) {
  const id = `${r}:${i}`;
  if (!state.nodes.has(id)) {
    state.nodes.set(id, { round: r, index: i, parents: [], status: "waiting", answer: null, tokens: 0, cut: false });
  }
  return state.nodes.get(id);
}

function setStatus(phase, text) {
  state.phase = phase;
  const el = $("run-status");
  el.dataset.state = phase;
  el.textContent = text;
}

// ------------------------------------------------------------------ events

function onEvent(e) {
  switch (e.event) {
    case "run_started":
      state.population = e.population; state.k = e.k; state.rounds = e.rounds; state.seed = e.seed;
      setStatus("running", `running · seed ${e.seed ?? "?"} · N=${e.population} K=${e.k} T=${e.rounds}`);
      break;
    case "node_started": {
      const n = node(e.round, e.index);
      n.parents = e.parents || [];
      n.status = "running";
      break;
    }
    case "node_finished": {
      const n = node(e.round, e.index);
      if (e.parents && !n.parents.length) n.parents = e.parents;
      n.status = e.status || "finished";
      n.answer = e.answer;
      n.tokens = e.tokens ?? 0;
      n.cut = !!e.cut;
      if (state.phase !== "final") setStatus("running", `running · round ${e.round + 1}` + (state.rounds ? ` of ${state.rounds}` : ""));
      break;
    }
    case "round_completed":
      (e.answers || []).forEach((a, i) => { const n = node(e.round, i); if (n.answer == null) n.answer = a; });
      break;
    case "final_started":
      state.final = { mode: e.mode, parents: e.parents || [], answer: null, round: null };
      setStatus("final", `final ${e.mode}…`);
      break;
    case "run_completed":
      state.final = Object.assign(state.final || { mode: e.final_mode, parents: [] },
                                  { answer: e.answer, mode: e.final_mode, round: e.rounds_completed });
      $("final-answer").textContent = e.answer ?? "(no answer extracted)";
      $("final-mode").textContent = `${e.final_mode} · stopped on ${e.stop_reason} after ${e.rounds_completed} round(s), ${e.calls} calls`;
      if (e.usage) showUsage(e.usage);
      setStatus("completed", `completed · ${e.stop_reason} · seed ${e.seed}`);
      break;
    case "run_failed":
      showError(e.error ? e.error.message : "run failed");
      break;
  }
  schedule();
}

function onChunk(obj) {
  if (obj.error) { showError(obj.error.message || JSON.stringify(obj.error)); return; }
  if (obj.rsa) onEvent(obj.rsa);
  else if (obj.event) onEvent(obj);
  for (const choice of obj.choices || []) {
    const text = choice.delta && choice.delta.content;
    if (text) { state.finalText += text; $("final-text").textContent = state.finalText; }
  }
  if (obj.usage) showUsage(obj.usage);
}

function showUsage(u) {
  $("usage").textContent = `${u.completion_tokens} completion tokens (${(u.completion_tokens_details || {}).reasoning_tokens ?? "?"} in traces), ${u.prompt_tokens} prompt`;
}

function showError(message) {
  $("error").textContent = message;
  setStatus("failed", "failed");
}

// ------------------------------------------------------------------ transport

async function readSSE(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      try { onData(JSON.parse(data)); } catch (err) { console.warn("bad SSE data", data, err); }
    }
  }
}

function headers() {
  const key = $("api_key").value || sessionStorage.getItem("mrsa-key") || "";
  if ($("api_key").value) sessionStorage.setItem("mrsa-key", $("api_key").value);
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failed(response) {
  let message = `HTTP ${response.status}`;
  try { message += `: ${(await response.json()).error.message}`; } catch (_) { /* not JSON */ }
  showError(message);
}

function intField(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : parseInt(v, 10);
}

async function startRun(ev) {
  if (ev) ev.preventDefault();
  if (abortController) abortController.abort();
  abortController = new AbortController();
  state = freshState();
  $("final-answer").textContent = "–"; $("final-mode").textContent = ""; $("final-text").textContent = "";
  $("error").textContent = ""; $("usage").textContent = "–";
  setStatus("starting", "starting…");
  schedule();
  $("start").disabled = true;
  try {
    const models = await fetch("/v1/models", { headers: headers() });
    if (!models.ok) return failed(models);
    const model = (await models.json()).data[0].id;
    const rsa = {};
    for (const f of ["population", "k", "rounds", "tail_tokens", "trace_max_tokens", "seed"]) {
      const v = intField(f);
      if (v !== undefined) rsa[f] = v;
    }
    const body = { model, stream: true, stream_options: { include_usage: true }, rsa,
                   messages: [{ role: "user", content: $("question").value }] };
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: abortController.signal });
    if (!response.ok) return failed(response);
    await readSSE(response, onChunk);
    if (state.phase !== "completed" && state.phase !== "failed") setStatus("failed", "stream ended early");
  } catch (err) {
    if (err.name !== "AbortError") showError(String(err));
  } finally {
    $("start").disabled = false;
  }
}

async function followRun(id) {
  state = freshState();
  $("error").textContent = "";
  setStatus("starting", `following run ${id}…`);
  schedule();
  const response = await fetch(`/v1/rsa/runs/${encodeURIComponent(id)}/events`, { headers: headers() });
  if (!response.ok) return failed(response);
  await readSSE(response, onChunk);
}

// ------------------------------------------------------------------ drawing

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

function position(r, i) {
  return { x: PAD + r * COL_W, y: PAD + i * ROW_H };
}

function render() {
  const svg = $("graph");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  let maxRound = state.rounds - 1, maxIndex = state.population - 1;
  for (const n of state.nodes.values()) { maxRound = Math.max(maxRound, n.round); maxIndex = Math.max(maxIndex, n.index); }
  const finalCol = maxRound + 1;
  const width = PAD * 2 + (finalCol + (state.final ? 1 : 0)) * COL_W;
  const height = PAD * 2 + Math.max(1, maxIndex + 1) * ROW_H;
  svg.setAttribute("width", Math.max(400, width));
  svg.setAttribute("height", Math.max(200, height));
  for (let r = 0; r <= maxRound; r++) {
    el("text", { x: PAD + r * COL_W, y: 18, "font-size": 12, fill: "#5a6272" }, svg).textContent = `round ${r + 1}`;
  }
  const edges = el("g", { id: "edges" }, svg);
  const boxes = el("g", { id: "nodes" }, svg);
  for (const n of state.nodes.values()) {
    const to = position(n.round, n.index);
    for (const p of n.parents) {
      const from = position(n.round - 1, p);
      drawEdge(edges, from, to, { "data-from": `${n.round - 1}:${p}`, "data-to": `${n.round}:${n.index}` });
    }
    drawNode(boxes, n, to);
  }
  if (state.final) {
    const to = { x: PAD + finalCol * COL_W, y: PAD + Math.max(0, (maxIndex * ROW_H) / 2) };
    const parentRound = state.final.round != null ? state.final.round - 1 : maxRound;
    for (const p of state.final.parents || []) {
      drawEdge(edges, position(parentRound, p), to, { class: "edge final", "data-from": `${parentRound}:${p}`, "data-to": "final" });
    }
    el("text", { x: to.x, y: 18, "font-size": 12, fill: "#5a6272" }, svg).textContent = "final";
    const g = el("g", { class: "node final", id: "final-node", "data-status": state.phase === "completed" ? "finished" : "running", "data-answer": state.final.answer ?? "" }, boxes);
      const fill = state.final.answer != null ? colorOf(state.final.answer) : "#fff";
    el("rect", { x: to.x, y: to.y, width: BOX_W, height: BOX_H, rx: 6, fill, "stroke-width": 2.5 }, g);
    const shown = state.final.answer ?? (state.phase === "completed" ? "no answer" : "…");
    label(g, to, `final · ${state.final.mode || ""}`, shown, fill);
  }
  renderLegend();
}

function drawEdge(parent, from, to, attrs) {
  const x1 = from.x + BOX_W, y1 = from.y + BOX_H / 2, x2 = to.x, y2 = to.y + BOX_H / 2, mid = (x1 + x2) / 2;
  el("path", Object.assign({ class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}` }, attrs), parent);
}

function drawNode(parent, n, at) {
  const g = el("g", { class: "node", "data-round": n.round, "data-index": n.index, "data-status": n.status,
                      "data-answer": n.answer ?? "", "data-tokens": n.tokens }, parent);
  const fill = n.status === "finished" ? colorOf(n.answer) : "#fff";
  el("rect", { x: at.x, y: at.y, width: BOX_W, height: BOX_H, rx: 6, fill }, g);
  const head = `r${n.round + 1}·${n.index}` + (n.status === "running" || n.status === "waiting" ? "" : `  ${n.tokens} tok${n.cut ? "✂" : ""}`);
  const body = n.status === "finished" ? (n.answer ?? "no answer") : n.status === "running" ? "generating…" : n.status;
  label(g, at, head, body, fill);
  el("title", {}, g).textContent = `round ${n.round + 1}, node ${n.index}\nparents: ${n.parents.join(", ") || "-"}\nanswer: ${n.answer ?? "-"}\ntokens: ${n.tokens}`;
}

function label(g, at, head, body, background) {
  const fill = PALETTE.includes(background) && !DARK_TEXT.has(background) ? "#fff" : "#1d2330";
  el("text", { x: at.x + 8, y: at.y + 17, "font-size": 11, fill }, g).textContent = head;
  const text = String(body);
  el("text", { x: at.x + 8, y: at.y + 36, "font-size": 14, "font-weight": 600, fill }, g).textContent = text.length > 15 ? text.slice(0, 14) + "…" : text;
}

function renderLegend() {
  const legend = $("legend");
  legend.textContent = "";
  const counts = new Map();
  for (const n of state.nodes.values()) {
    if (n.status !== "finished") continue;
    const key = answerKey(n.answer) ?? "(none)";
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  for (const [key, count] of [...counts.entries()].sort((a, b) => b[1] - a[1])) {
    const row = document.createElement("div");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = key === "(none)" ? NO_ANSWER : state.colors.get(key);
    row.appendChild(sw);
    row.appendChild(document.createTextNode(`${key}  ×${count}`));
    legend.appendChild(row);
  }
}

// ------------------------------------------------------------------ start

const followed = new URLSearchParams(location.search).get("run");
if (followed) {
  // Following a background run: only the API key field stays (a 401 can be answered with it).
  for (const label of document.querySelectorAll("#ask label")) {
    if (!label.contains($("api_key"))) label.style.display = "none";
  }
  $("start").textContent = "Follow run";
  const follow = (ev) => { if (ev) ev.preventDefault(); followRun(followed).catch((err) => showError(String(err))); };
  $("ask").addEventListener("submit", follow);
  follow();
} else {
  $("ask").addEventListener("submit", startRun);
}
render();
