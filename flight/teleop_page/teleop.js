// The teleop page: draws what the runner sends (25 Hz over the WebSocket /ws) and sends the
// operator's commands. Positions are world ENU metres, as the runner uses them. No libraries.
"use strict";

const DRONE = "#1565c0", GOAL = "#ff6d00", FENCE = "#37474f", CLAMP = "#90a4ae", GRID = "#eceff1";
const TRAIL_S = 8;                       // the trail fades out over this many seconds
const SEND_EVERY_MS = 50;                // drags are sent at most 20 times a second (the last one always)
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const views = {top: {canvas: $("top"), axes: [0, 1]}, side: {canvas: $("side"), axes: [0, 2]}};

let ws = null, state = null, trail = [], drag = null, lastSendMs = 0, sentGoal = null, unanswered = 0, lastStateMs = 0;
const stats = {count: 0, since: performance.now(), hz: 0, received: 0};
const replies = [];

// for people debugging and for the browser tests: the latest state, the update rate, screen points
window.teleop = {
  get state() { return state; }, get hz() { return stats.hz; }, replies,
  toScreen(view, p) {
    const v = views[view], r = v.canvas.getBoundingClientRect(), [x, y] = frame(v).px(p);
    return [r.left + x * r.width / v.canvas.width, r.top + y * r.height / v.canvas.height];
  },
};

function connect() {
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "state") onState(m); else onReply(m);
  };
  ws.onclose = () => {
    unanswered = 0;
    setLink(false, "no connection to the runner: retrying");
    setTimeout(connect, 1000);
  };
}

// the runner sends 25 states a second: say so when they stop (a stalled network, a stopped runner)
setInterval(() => {
  const quietS = (performance.now() - lastStateMs) / 1000;
  if (state && quietS > 0.5) setLink(false, `no update from the runner for ${quietS.toFixed(1)} s`);
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
  state = m;
  lastStateMs = now;
  stats.count += 1;
  // the runner holds the target when it hears nothing from the page for 1 s; pinging from here, not
  // from a timer, keeps a page in a background tab (whose timers the browser slows) alive
  if (++stats.received % 5 === 0 && (token || !m.token_required)) send({cmd: "ping"});
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
  if (age == null || age > 0.5 || hb == null || hb > 1.5) {
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
  $("failsafe").hidden = !m.failsafe;
  $("failsafe").textContent = m.failsafe ? `failsafe: ${m.failsafe}` : "";
  $("pos").textContent = fmt(m.pos_enu_m);
  $("target").textContent = fmt(m.target_enu_m);
  $("goal").textContent = fmt(m.goal_enu_m);
  $("takeoff").disabled = m.phase !== "ready";
  $("hold").disabled = $("land").disabled = m.phase !== "flying";
  if (m.token_required && !token) {
    $("message").textContent = "view only: open the URL the runner printed (with its token) to steer";
  }
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
    box(ctx, f, state.goal_min_enu_m, state.goal_max_enu_m, CLAMP, [6, 4]);
    ctx.lineWidth = 2;
    for (let i = 1; i < trail.length; i++) {           // the trail fades with age
      const alpha = 0.6 * (1 - (now - trail[i].t) / (TRAIL_S * 1000));
      ctx.strokeStyle = `rgba(21, 101, 192, ${Math.max(0, alpha).toFixed(3)})`;
      ctx.beginPath(); ctx.moveTo(...f.px(trail[i - 1].p)); ctx.lineTo(...f.px(trail[i].p)); ctx.stroke();
    }
    if (drag && drag.ghost) {
      ctx.setLineDash([4, 3]);
      dot(ctx, f.px(drag.ghost), 9, CLAMP, false);
      ctx.setLineDash([]);
    }
    dot(ctx, f.px(sentGoal || state.goal_enu_m), 9, GOAL, false);     // the goal, clamped by the runner
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
    if (!state) return;
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
  if (!key || !state) return;
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
