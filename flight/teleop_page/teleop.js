// The page of the runner's server: the teleop page (fly --teleop) and the flight view (fly --view,
// skyloop view LOG). It draws what the server sends (the state 25 Hz over the WebSocket /ws; the
// course, and for a replay the whole flight, once at connect) and sends the operator's commands.
// Positions are world ENU metres, as the runner uses them. No libraries.
"use strict";

const DRONE = "#1565c0", GOAL = "#ff6d00", FENCE = "#37474f", CLAMP = "#90a4ae", GRID = "#eceff1";
const GHOST = "#d500f9", GATE = "#2e7d32";
const TRAIL_S = 8;                       // the trail fades out over this many seconds
const SEND_EVERY_MS = 50;                // drags are sent at most 20 times a second (the last one always)
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const views = {top: {canvas: $("top"), axes: [0, 1]}, side: {canvas: $("side"), axes: [0, 2]}};

let ws = null, state = null, trail = [], drag = null, lastSendMs = 0, sentGoal = null, unanswered = 0, lastStateMs = 0;
let course = null, replay = null, live = null;      // the course (gates) and a saved flight, sent once at connect
const stats = {count: 0, since: performance.now(), hz: 0, received: 0};
const replies = [];

// for people debugging and for the browser tests: the latest state, the update rate, screen points
window.teleop = {
  get state() { return state; }, get hz() { return stats.hz; }, replies, get course() { return course; },
  get unanswered() { return unanswered; },
  get replay() { return replay; },
  toScreen(view, p) {
    const v = views[view], r = v.canvas.getBoundingClientRect(), [x, y] = frame(v).px(p);
    return [r.left + x * r.width / v.canvas.width, r.top + y * r.height / v.canvas.height];
  },
};

function connect() {
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${query}`);
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "state") onState(m);
    else if (m.type === "course") course = m.course;
    else if (m.type === "replay") onReplay(m);
    else onReply(m);
  };
  ws.onclose = () => {
    unanswered = 0;
    setLink(false, "no connection to the runner: retrying" +
      (token ? "" : " (a runner bound beyond loopback needs the printed URL, with its token)"));
    setTimeout(connect, 1000);
  };
}

// the runner sends 25 states a second: say so when they stop (a stalled network, a stopped runner)
setInterval(() => {
  const quietS = (performance.now() - lastStateMs) / 1000;
  if (state && !replay && quietS > 0.5) setLink(false, `no update from the runner for ${quietS.toFixed(1)} s`);
}, 250);

function send(msg) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify({...msg, token}));
  return true;
}

function onReply(m) {
  replies.push(m);
  if (replies.length > 500) replies.shift();
  $("message").textContent = m.ok ? "" : m.error;
  if (m.cmd === "goto" && --unanswered <= 0) {
    unanswered = 0;
    if (m.ok) sentGoal = m.goal_enu_m;                       // the newest goal, as the runner clamped it
  }
}

function onState(m) {
  const now = performance.now();
  live = m;
  lastStateMs = now;
  stats.count += 1;
  document.body.classList.toggle("no-teleop", !m.teleop);
  if (replay) {                                             // a saved flight: the slider says where we are
    state = {...m, ...replayFrame(+$("slider").value)};
    showStatus(state);
    draw();
    return;
  }
  state = m;
  // the runner holds the target when it hears nothing from the page for 1 s; pinging from here, not
  // from a timer, keeps a page in a background tab (whose timers the browser slows) alive
  if (++stats.received % 5 === 0 && m.teleop && (token || !m.token_required)) send({cmd: "ping"});
  if (now - stats.since >= 1000) {
    stats.hz = stats.count * 1000 / (now - stats.since);
    stats.count = 0;
    stats.since = now;
    $("rate").textContent = `${stats.hz.toFixed(1)} Hz`;
  }
  if (m.pos_enu_m) trail.push({t: now, p: m.pos_enu_m});
  while (trail.length && now - trail[0].t > TRAIL_S * 1000) trail.shift();
  if (!drag && now - lastSendMs > 300) sentGoal = null;    // the runner's state has caught up with what we sent
  showStatus(m);
  draw();
}

function setLink(ok, text) {
  $("link").textContent = text;
  $("link").className = ok ? "ok" : "bad";
}

function fmt(p) { return p ? p.map((v) => (v === null ? "?" : v.toFixed(2))).join(", ") + " m" : "–"; }

function showStatus(m) {
  const age = m.telemetry_age_s, hb = m.heartbeat_age_s;
  if (replay) {
    setLink(true, `replay of ${replay.source}`);
  } else if (age == null || age > 0.5 || hb == null || hb > 1.5) {
    setLink(false, `link: no telemetry${age == null ? "" : ` for ${age.toFixed(1)} s`}`);
  } else {
    setLink(true, `link ok${m.link_latency_ms == null ? "" : ` (${m.link_latency_ms.toFixed(1)} ms)`}`);
  }
  $("phase").textContent = m.holding_s == null ? m.phase
    : `holding: no page for ${m.holding_s.toFixed(1)} s, landing at ${m.land_after_s} s`;
  $("mode").textContent = m.mode;
  $("armed").textContent = m.armed ? "ARMED" : "disarmed";
  $("armed").className = m.armed ? "bad" : "";
  $("battery").textContent = m.battery_v == null ? "?" : `${m.battery_v.toFixed(2)} V`;
  const failsafe = m.failsafe || (m.flight_failsafe && m.flight_failsafe !== "completed" ? m.flight_failsafe : null);
  $("failsafe").hidden = !failsafe;
  $("failsafe").textContent = failsafe ? `failsafe: ${failsafe}` : "";
  showFigures(m);
  $("pos").textContent = fmt(m.pos_enu_m);
  $("target").textContent = fmt(m.target_enu_m);
  $("goal").textContent = fmt(m.goal_enu_m);
  $("takeoff").disabled = m.phase !== "ready";
  $("hold").disabled = $("land").disabled = m.phase !== "flying";
  if (m.teleop && m.token_required && !token) {
    $("message").textContent = "view only: open the URL the runner printed (with its token) to steer";
  }
}

function cm(v) { return v == null ? "–" : `${(100 * v).toFixed(1)} cm`; }

// the flight view's figures: the ghost's error at each horizon, tick timing, link latency
function showFigures(m) {
  $("figures").hidden = !m.view;
  if (!m.view) return;
  for (const [h, e] of Object.entries(m.errors || {})) {
    const row = $(`err-${h}`);
    if (!row) continue;
    const cells = row.querySelectorAll("td");
    cells[1].textContent = cm(e.last_m);
    cells[2].textContent = cm(e.median_m);
    cells[3].textContent = cm(e.p90_m);
    cells[4].textContent = `${e.n}`;
  }
  if (m.tick_ms) {
    const t = m.tick_ms;
    $("tick").textContent = t.p99 == null ? "–" : `p99 ${t.p99.toFixed(2)} ms, mean ${t.mean.toFixed(2)} ms`;
  }
  $("missed").textContent = m.missed_ticks == null ? "–" : `${m.missed_ticks}`;
  $("latency").textContent = m.link_latency_ms == null ? "–" : `${m.link_latency_ms.toFixed(1)} ms`;
  $("predictions").textContent = `${m.predictions || 0}` + (m.ghost_error ? ` (${m.ghost_error})` : "");
}

// ---------------------------------------------------------------- replay of a saved flight
function onReplay(m) {
  replay = m;
  document.body.classList.add("replay", "no-teleop");
  $("title").textContent = "skyloop view";
  $("replay").hidden = false;
  $("slider").max = `${m.t_s.length - 1}`;
  $("replay-end").textContent = `${m.t_s[m.t_s.length - 1].toFixed(2)} s`;
  $("replay-source").textContent = `${m.source} (${m.format}), sim replay every ${m.metrics.every_s.toFixed(2)} s`;
  $("slider").oninput = () => { state = {...(live || {}), ...replayFrame(+$("slider").value)}; showStatus(state); draw(); };
  state = {...(live || {}), ...replayFrame(0)};
  showStatus(state);
  draw();
}

// the state the page draws at sample i of the replay: the drone, its trail, the newest sim window
function replayFrame(i) {
  const r = replay, t = r.t_s[i];
  let w = null;
  for (const win of r.windows) if (win.t_s <= t + 1e-9) w = win;
  const errors = {};
  for (const [h, med] of Object.entries(r.metrics.error_m)) {
    errors[h] = {last_m: w ? w.error_m[h] : null, median_m: med, p90_m: r.metrics.error_m_p90[h],
                 n: r.metrics.windows[h]};
  }
  const from = r.t_s.findIndex((s) => s >= t - TRAIL_S);
  trail = r.pos_enu_m.slice(Math.max(0, from), i + 1).map((p, k) => ({t: null, p, k}));
  $("replay-t").textContent = `${t.toFixed(2)} s`;
  return {view: "replay", teleop: false, pos_enu_m: r.pos_enu_m[i], yaw_enu_rad: r.yaw_enu_rad[i],
          mode: r.mode ? r.mode[i] : "replay", bounds_min_enu_m: r.bounds_min_enu_m,
          bounds_max_enu_m: r.bounds_max_enu_m, ghost_enu_m: w ? w.path_enu_m : null, errors,
          index: i, t_s: t};
}

// world <-> canvas pixels for one view: the geofence box fitted with equal scales
function frame(view) {
  const c = view.canvas, [a, b] = view.axes, lo = state.bounds_min_enu_m, hi = state.bounds_max_enu_m, pad = 24;
  const s = Math.min((c.width - 2 * pad) / (hi[a] - lo[a]), (c.height - 2 * pad) / (hi[b] - lo[b]));
  const ox = (c.width - s * (hi[a] - lo[a])) / 2, oy = (c.height - s * (hi[b] - lo[b])) / 2;
  return {
    s,
    px: (p) => [ox + (p[a] - lo[a]) * s, c.height - oy - (p[b] - lo[b]) * s],
    world: (x, y) => [lo[a] + (x - ox) / s, lo[b] + (c.height - oy - y) / s],
  };
}

function box(ctx, f, lo, hi, color, dash) {
  const [x0, y0] = f.px(lo), [x1, y1] = f.px(hi);
  ctx.setLineDash(dash);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.strokeRect(x0, y1, x1 - x0, y0 - y1);
  ctx.setLineDash([]);
}

function dot(ctx, [x, y], r, color, fill) {
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  if (fill) { ctx.fillStyle = color; ctx.fill(); } else { ctx.strokeStyle = color; ctx.lineWidth = 3; ctx.stroke(); }
}

function grid(ctx, f, view) {
  const [a, b] = view.axes, lo = state.bounds_min_enu_m, hi = state.bounds_max_enu_m;
  ctx.strokeStyle = GRID;
  ctx.lineWidth = 1;
  for (let u = Math.ceil(lo[a]); u <= hi[a]; u++) {
    const p = [0, 0, 0], q = [0, 0, 0];
    p[a] = q[a] = u; p[b] = lo[b]; q[b] = hi[b];
    ctx.beginPath(); ctx.moveTo(...f.px(p)); ctx.lineTo(...f.px(q)); ctx.stroke();
  }
  for (let v = Math.ceil(lo[b]); v <= hi[b]; v++) {
    const p = [0, 0, 0], q = [0, 0, 0];
    p[b] = q[b] = v; p[a] = lo[a]; q[a] = hi[a];
    ctx.beginPath(); ctx.moveTo(...f.px(p)); ctx.lineTo(...f.px(q)); ctx.stroke();
  }
}

function draw() {
  const now = performance.now();
  for (const [name, view] of Object.entries(views)) {
    const ctx = view.canvas.getContext("2d"), f = frame(view);
    ctx.clearRect(0, 0, view.canvas.width, view.canvas.height);
    grid(ctx, f, view);
    box(ctx, f, state.bounds_min_enu_m, state.bounds_max_enu_m, FENCE, []);
    if (state.goal_min_enu_m) box(ctx, f, state.goal_min_enu_m, state.goal_max_enu_m, CLAMP, [6, 4]);
    if (course) drawGates(ctx, f, view);
    ctx.lineWidth = 2;
    for (let i = 1; i < trail.length; i++) {           // the trail fades with age
      if (!trail[i].p || !trail[i - 1].p) continue;
      const alpha = trail[i].t === null ? 0.6 * i / trail.length : 0.6 * (1 - (now - trail[i].t) / (TRAIL_S * 1000));
      ctx.strokeStyle = `rgba(21, 101, 192, ${Math.max(0, alpha).toFixed(3)})`;
      ctx.beginPath(); ctx.moveTo(...f.px(trail[i - 1].p)); ctx.lineTo(...f.px(trail[i].p)); ctx.stroke();
    }
    if (drag && drag.ghost) {
      ctx.setLineDash([4, 3]);
      dot(ctx, f.px(drag.ghost), 9, CLAMP, false);
      ctx.setLineDash([]);
    }
    if (state.ghost_enu_m) {                           // what the sim thinks the drone will do next
      ctx.strokeStyle = GHOST;
      ctx.lineWidth = 3;
      ctx.beginPath();
      state.ghost_enu_m.forEach((p, k) => { if (p && p[0] !== null) ctx[k ? "lineTo" : "moveTo"](...f.px(p)); });
      ctx.stroke();
      const end = state.ghost_enu_m[state.ghost_enu_m.length - 1];
      if (end && end[0] !== null) dot(ctx, f.px(end), 4, GHOST, true);
    }
    if (state.goal_enu_m) dot(ctx, f.px(sentGoal || state.goal_enu_m), 9, GOAL, false);   // the goal, clamped
    if (state.target_enu_m) dot(ctx, f.px(state.target_enu_m), 4, GOAL, true);   // what the drone flies to now
    if (state.pos_enu_m) {
      const p = f.px(state.pos_enu_m);
      dot(ctx, p, 7, DRONE, true);
      if (name === "top" && state.yaw_enu_rad != null) {     // heading: 0 = east, counter-clockwise
        ctx.strokeStyle = DRONE;
        ctx.lineWidth = 3;
        ctx.beginPath(); ctx.moveTo(...p);
        ctx.lineTo(p[0] + 18 * Math.cos(state.yaw_enu_rad), p[1] - 18 * Math.sin(state.yaw_enu_rad));
        ctx.stroke();
      }
    }
  }
}

// gates: in the top view a bar across the opening (with a tick along the flight direction), from
// the south the opening as a rectangle
function drawGates(ctx, f, view) {
  ctx.strokeStyle = GATE;
  ctx.lineWidth = 3;
  for (const g of course.gates) {
    const c = g.centre_enu_m, yaw = g.yaw_deg * Math.PI / 180, [w, h] = g.inner_size_m;
    const across = [-Math.sin(yaw) * w / 2, Math.cos(yaw) * w / 2];
    const a = [c[0] - across[0], c[1] - across[1], c[2] - h / 2], b = [c[0] + across[0], c[1] + across[1], c[2] + h / 2];
    if (view.axes[1] === 1) {
      ctx.beginPath(); ctx.moveTo(...f.px(a)); ctx.lineTo(...f.px(b)); ctx.stroke();
      ctx.beginPath(); ctx.moveTo(...f.px(c)); ctx.lineTo(...f.px([c[0] + 0.4 * Math.cos(yaw), c[1] + 0.4 * Math.sin(yaw), c[2]]));
      ctx.stroke();
    } else {
      const [x0, y0] = f.px(a), [x1, y1] = f.px(b);
      ctx.strokeRect(Math.min(x0, x1) - 1.5, Math.min(y0, y1), Math.abs(x1 - x0) + 3, Math.abs(y1 - y0));
    }
  }
}

function goalNow() { return (sentGoal || state.goal_enu_m).slice(); }

function sendGoal(p, via) {
  sentGoal = p;
  if (send({cmd: "goto", pos_enu_m: p, via})) unanswered += 1;
  lastSendMs = performance.now();
}

for (const view of Object.values(views)) {
  const c = view.canvas;
  const moveTo = (e, last) => {
    const r = c.getBoundingClientRect(), f = frame(view);
    const [u, v] = f.world((e.clientX - r.left) * c.width / r.width, (e.clientY - r.top) * c.height / r.height);
    const p = drag.ghost || goalNow();
    p[view.axes[0]] = u;
    p[view.axes[1]] = v;
    drag.ghost = p;
    if (last || performance.now() - lastSendMs >= SEND_EVERY_MS) sendGoal(p.slice(), "drag");
  };
  c.addEventListener("pointerdown", (e) => {
    if (!state || !state.teleop) return;
    c.setPointerCapture(e.pointerId);
    c.focus();
    drag = {ghost: null};
    moveTo(e, false);
  });
  c.addEventListener("pointermove", (e) => { if (drag) moveTo(e, false); });
  c.addEventListener("pointerup", (e) => { if (drag) { moveTo(e, true); drag = null; } });
}

const KEYS = {ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowUp: [1, 1], ArrowDown: [1, -1],   // [axis, sign]
              PageUp: [2, 1], PageDown: [2, -1]};
document.addEventListener("keydown", (e) => {
  const key = KEYS[e.key];
  if (!key || !state || !state.teleop) return;
  e.preventDefault();
  const p = goalNow();
  p[key[0]] += key[1] * (e.shiftKey ? 0.5 : 0.1);
  sendGoal(p, "key");
});

$("takeoff").onclick = () => send({cmd: "takeoff"});
$("hold").onclick = () => send({cmd: "hold"});
$("land").onclick = () => send({cmd: "land"});
$("kill").onclick = () => {
  if (confirm("Kill: disarm the motors now? A flying drone will fall.")) send({cmd: "kill"});
};

connect();
