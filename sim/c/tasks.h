/* tasks.h -- the tasks: how an episode of each starts (task draw, start, target), what it
 * rewards, when it ends, and the record of each finished episode.
 */
#ifndef SKYLOOP_TASKS_H
#define SKYLOOP_TASKS_H

#include "world.h"

/* Where the target is at time t_s, and how fast it moves: c + A sin(W t + phase). */
SL_INLINE void sl_target_at(float *restrict F, int np, int i, float t_s) {
    for (int a = 0; a < 3; a++) {
        float ph = SL_D(move_w_rad_s, a) * t_s + SL_D(move_phase_rad, a);
        SL_D(target_enu_m, a) = SL_D(move_centre_enu_m, a) + SL_D(move_amp_m, a) * sinf(ph);
        SL_D(target_vel_enu_m_s, a) = SL_D(move_amp_m, a) * SL_D(move_w_rad_s, a) * cosf(ph);
    }
}

static int sl_draw_task(const SlEnv *e, uint32_t *rng) {
    float u = sl_uniform(rng);
    for (int k = 0; k < SL_N_TASKS - 1; k++)
        if (u < e->task_cdf[k]) return k;
    return SL_N_TASKS - 1;
}

/* A start position free of obstacles and other drones (a few tries, then the last one): in the
 * box, or (gate given) 1.5 to 3 m before the gate, facing it. */
static void sl_free_start(SlEnv *e, int i, uint32_t *rng, const float lo[3], const float hi[3], int on_ground,
                          const float *gate, float p[3]) {
    const float *F = e->f;
    const int np = e->n_pad, space = i / e->space_size, first = space * e->space_size;
    for (int attempt = 0; attempt < 16; attempt++) {
        if (gate && attempt < 12) {
            float back = sl_uniform_in(rng, 1.5f, 3.f), side = sl_uniform_in(rng, -0.5f, 0.5f) * gate[SL_GATE_HALF_WIDTH];
            p[0] = sl_clamp(gate[0] - back * gate[3] - side * gate[4], lo[0], hi[0]);
            p[1] = sl_clamp(gate[1] - back * gate[4] + side * gate[3], lo[1], hi[1]);
            p[2] = sl_clamp(gate[2] + sl_uniform_in(rng, -0.5f, 0.5f) * gate[SL_GATE_HALF_HEIGHT], lo[2], hi[2]);
        } else {
            p[0] = sl_uniform_in(rng, lo[0], hi[0]);
            p[1] = sl_uniform_in(rng, lo[1], hi[1]);
            p[2] = on_ground ? 0.f : sl_uniform_in(rng, lo[2], hi[2]);
        }
        int ok = gate || sl_clear_of_world(e, space, p, SL_D(radius_m, 0) + 0.3f); /* near a gate by design */
        for (int j = first; j < first + e->space_size && j < e->n && ok; j++) {
            if (j == i) continue;
            float q[3] = {F[(ptrdiff_t)SL_ROW_pos_enu_m * np + j], F[(ptrdiff_t)(SL_ROW_pos_enu_m + 1) * np + j],
                          F[(ptrdiff_t)(SL_ROW_pos_enu_m + 2) * np + j]};
            ok = sl_dist3(p, q) > SL_D(radius_m, 0) + F[(ptrdiff_t)SL_ROW_radius_m * np + j] + 0.5f;
        }
        if (ok) return;
    }
}

/* ============================================================================================
 * 1. One function per task, behind a table. Each task reduces to "where should I be, and what
 *    must I avoid": a world of its own (when the drone has one), a start, and a target
 *    c + A sin(W t + phase) (A = 0: a fixed point), and a goal that decides success.
 * ========================================================================================== */

/* What a task's functions share at a drone's reset. */
typedef struct {
    int i, space;
    float *gates;                 /* the drone's space's gates (n_gates of them) */
    float lo[3], hi[3], margin;   /* the box a start and a target stay in */
    float p[3], yaw;              /* the start */
    int on_ground, first_gate;
    float c[3], amp[3], w[3], phase[3]; /* the target */
} SlReset;

/* A world of its own (drones_per_space = 1): only what the task needs. Race: its course. */
static void sl_world_none(SlEnv *e, uint32_t *rng, SlReset *r) { (void)e; (void)rng; (void)r; }
static void sl_world_race(SlEnv *e, uint32_t *rng, SlReset *r) {
    const float *F = e->f;
    const int np = e->n_pad, i = r->i;
    if (e->course_n > 0) {
        memcpy(r->gates, e->course, sizeof e->course);
        e->n_gates[r->space] = e->course_n;
    } else {
        e->n_gates[r->space] = sl_random_course(&e->task, rng, e->task.gate_size_m + 4.f * SL_D(arm_m, 0), r->gates);
    }
}

/* The start: anywhere free in the box, on the ground for a share of episodes ... */
static void sl_start_free(SlEnv *e, uint32_t *rng, SlReset *r) {
    r->on_ground = sl_uniform(rng) < e->task.ground_start_prob;
    sl_free_start(e, r->i, rng, r->lo, r->hi, r->on_ground, NULL, r->p);
}
/* ... or (race) in the air before a gate, facing it: the first of a random course of its own, else any. */
static void sl_start_race(SlEnv *e, uint32_t *rng, SlReset *r) {
    if (e->n_gates[r->space] == 0) { sl_free_start(e, r->i, rng, r->lo, r->hi, 0, NULL, r->p); return; }
    r->first_gate = e->course_n > 0 || e->space_size > 1 ? (int)sl_uniform_in(rng, 0.f, (float)e->n_gates[r->space] - 0.001f) : 0;
    const float *g = r->gates + r->first_gate * SL_GATE_FLOATS;
    sl_free_start(e, r->i, rng, r->lo, r->hi, 0, g, r->p);
    r->yaw = atan2f(g[SL_GATE_NORMAL + 1], g[SL_GATE_NORMAL]) + sl_uniform_in(rng, -0.3f, 0.3f);
}

/* A fixed goal at a random distance (range) from the start, inside the box, clear of the world;
 * z_scale < 1 keeps it nearer the start's height. */
static void sl_goal_at_distance(SlEnv *e, uint32_t *rng, SlReset *r, const float range[2], float z_scale) {
    const float *F = e->f;
    const int np = e->n_pad, i = r->i;
    for (int attempt = 0; attempt < 8; attempt++) {
        float dist = sl_uniform_in(rng, range[0], range[1]);
        float dir[3] = {sl_normalish(rng), sl_normalish(rng), z_scale * sl_normalish(rng)};
        float dn = 1.f / sl_max(sl_norm3(dir), 1e-6f);
        for (int a = 0; a < 3; a++) r->c[a] = sl_clamp(r->p[a] + dist * dir[a] * dn, r->lo[a], r->hi[a]);
        r->c[2] = sl_max(r->c[2], r->margin);
        if (sl_clear_of_world(e, r->space, r->c, SL_D(radius_m, 0) + 0.3f)) break;
    }
}

/* hover / go-to: fly to a point and hold there */
static void sl_target_hover(SlEnv *e, uint32_t *rng, SlReset *r) {
    sl_goal_at_distance(e, rng, r, e->task.target_dist_m_range, 1.f);
}

/* race: the gates in order, for race_laps laps; the target is the next gate */
static void sl_target_race(SlEnv *e, uint32_t *rng, SlReset *r) {
    float *F = e->f;
    const int np = e->n_pad, i = r->i;
    SL_D(gates_to_pass, 0) = (float)e->n_gates[r->space] * e->task.race_laps;
    if (e->n_gates[r->space] == 0) { sl_target_hover(e, rng, r); return; }
    for (int a = 0; a < 3; a++) r->c[a] = r->gates[r->first_gate * SL_GATE_FLOATS + SL_GATE_CENTRE + a];
    SL_D(episode_s, 0) = SL_D(gates_to_pass, 0) * e->task.race_time_per_gate_s;
}

/* orbit: a circle of radius R about a point, at speed v */
static void sl_target_orbit(SlEnv *e, uint32_t *rng, SlReset *r) {
    const SlTaskConfig *t = &e->task;
    float room = sl_max(sl_min(r->hi[0] - r->lo[0], r->hi[1] - r->lo[1]) * 0.5f, 0.1f);
    float radius = sl_min(sl_uniform_in(rng, t->orbit_radius_m_range[0], t->orbit_radius_m_range[1]), room);
    float speed = sl_uniform_in(rng, t->orbit_speed_m_s_range[0], t->orbit_speed_m_s_range[1]);
    float spin = sl_uniform(rng) < 0.5f ? -1.f : 1.f;
    /* the target starts target_dist_m_range from the drone (a hover goal's distance), the centre
     * on the box's side of it (kept where the whole orbit fits) */
    sl_goal_at_distance(e, rng, r, t->target_dist_m_range, 1.f);
    float phi = atan2f(r->c[1] - 0.5f * (r->lo[1] + r->hi[1]), r->c[0] - 0.5f * (r->lo[0] + r->hi[0])) +
                sl_uniform_in(rng, -0.5f * SL_PI, 0.5f * SL_PI);
    r->c[0] = sl_clamp(r->c[0] - radius * cosf(phi), r->lo[0] + radius, r->hi[0] - radius);
    r->c[1] = sl_clamp(r->c[1] - radius * sinf(phi), r->lo[1] + radius, r->hi[1] - radius);
    r->amp[0] = r->amp[1] = radius;
    r->w[0] = r->w[1] = spin * speed / radius;
    r->phase[0] = phi + 0.5f * SL_PI; /* x = cx + R cos(w t + phi), y = cy + R sin(w t + phi) */
    r->phase[1] = phi;
}

/* follow: a smooth wandering point (a Lissajous curve about the box centre), at most
 * follow_speed, starting target_dist_m_range from the drone (each axis' amplitude and phase put
 * it there) */
static void sl_target_follow(SlEnv *e, uint32_t *rng, SlReset *r) {
    sl_goal_at_distance(e, rng, r, e->task.target_dist_m_range, 1.f);
    for (int a = 0; a < 3; a++) {
        const float first = r->c[a], half = 0.5f * (r->hi[a] - r->lo[a]);
        r->c[a] = 0.5f * (r->hi[a] + r->lo[a]);
        /* wide enough to pass through the start (not at its turning point, where the box allows) */
        r->amp[a] = sl_min(sl_max(half * sl_uniform_in(rng, 0.3f, 1.f), 1.25f * fabsf(first - r->c[a])), half);
        r->w[a] = r->amp[a] > 0.05f ? sl_uniform_in(rng, 0.5f, 1.f) * e->task.follow_speed_m_s_max / (r->amp[a] * 1.7320508f) : 0.f;
        const float s = r->amp[a] > 0.f ? asinf(sl_clamp((first - r->c[a]) / r->amp[a], -1.f, 1.f)) : 0.f;
        r->phase[a] = sl_uniform(rng) < 0.5f ? s : SL_PI - s; /* either way along the axis */
    }
}

/* formation: the drone's slot in its space's formation (alone: a slot anywhere in the box) */
static void sl_target_formation(SlEnv *e, uint32_t *rng, SlReset *r) {
    if (e->space_size == 1) {
        float centre[3];
        for (int a = 0; a < 3; a++) centre[a] = sl_uniform_in(rng, r->lo[a], r->hi[a]);
        sl_formation(&e->task, rng, 1, centre, e->formation + (size_t)r->space * 3);
    }
    for (int a = 0; a < 3; a++) r->c[a] = e->formation[((size_t)r->space * e->space_size + r->i % e->space_size) * 3 + a];
}

/* obstacles: a goal past a field of spheres (scattered about the way there, in a world of its own) */
static void sl_target_obstacles(SlEnv *e, uint32_t *rng, SlReset *r) {
    const float *F = e->f;
    const int np = e->n_pad, i = r->i;
    sl_goal_at_distance(e, rng, r, e->task.obstacle_goal_dist_m_range, 0.3f);
    if (e->space_size == 1) sl_obstacle_field(e, r->space, rng, r->p, r->c, SL_D(radius_m, 0) + 0.3f);
}

typedef struct {
    void (*world)(SlEnv *e, uint32_t *rng, SlReset *r);  /* a world of its own, drawn for the episode */
    void (*start)(SlEnv *e, uint32_t *rng, SlReset *r);
    void (*target)(SlEnv *e, uint32_t *rng, SlReset *r);
    SlGoal goal;                                          /* how the reward loop judges it (env.h) */
} SlTask;

static const SlTask SL_TASK_TABLE[SL_N_TASKS] = {
    [SL_TASK_hover] = {sl_world_none, sl_start_free, sl_target_hover, SL_GOAL_HOLD},
    [SL_TASK_race] = {sl_world_race, sl_start_race, sl_target_race, SL_GOAL_GATES},
    [SL_TASK_orbit] = {sl_world_none, sl_start_free, sl_target_orbit, SL_GOAL_TRACK},
    [SL_TASK_follow] = {sl_world_none, sl_start_free, sl_target_follow, SL_GOAL_TRACK},
    [SL_TASK_formation] = {sl_world_none, sl_start_free, sl_target_formation, SL_GOAL_HOLD},
    [SL_TASK_obstacles] = {sl_world_none, sl_start_free, sl_target_obstacles, SL_GOAL_HOLD},
};

/* ============================================================================================
 * 2. A drone's reset: a new drone drawn from the profile, a task drawn from the mix, then the
 *    task's world, start and target; the attitude, speeds and rotor speeds of the start.
 * ========================================================================================== */
static void sl_reset_drone(SlEnv *e, int i) {
    const SlTaskConfig *t = &e->task;
    float *F = e->f;
    const int np = e->n_pad, space = i / e->space_size;
    uint32_t *rng = &e->rng[i];
    sl_randomize_drone(e, i);
    sl_derive_drone(e, i);
    const int task = sl_draw_task(e, rng);
    const SlTask *fn = &SL_TASK_TABLE[task];
    SL_D(task_id, 0) = (float)task;
    SL_D(goal, 0) = (float)fn->goal;
    SlReset r = {.i = i, .space = space, .gates = e->gates + (size_t)space * SL_MAX_GATES * SL_GATE_FLOATS};
    if (e->space_size == 1) {
        e->n_gates[space] = e->n_obstacles[space] = 0;
        fn->world(e, rng, &r);
    }
    r.margin = sl_min(1.f, 0.25f * t->bounds_m[2]);
    r.yaw = sl_uniform_in(rng, -SL_PI, SL_PI);
    sl_inner_box(t, r.margin, r.lo, r.hi);
    r.lo[2] = r.margin; /* the floor margin */
    fn->start(e, rng, &r);
    const int on_ground = r.on_ground;
    /* random attitude: yaw, then a tilt up to init_tilt_max about a random horizontal axis */
    float tilt = on_ground ? 0.f : t->init_tilt_max_rad * sl_uniform(rng);
    float axis = sl_uniform_in(rng, -SL_PI, SL_PI);
    float cy = cosf(0.5f * r.yaw), sy = sinf(0.5f * r.yaw), ct = cosf(0.5f * tilt), st = sinf(0.5f * tilt);
    float ax = cosf(axis), ay = sinf(axis);
    float q[4] = {ct * cy, st * ax * cy + st * ay * sy, st * ay * cy - st * ax * sy, ct * sy}; /* q_tilt * q_yaw */
    float omega_hover = sqrtf(SL_D(mass_kg, 0) * SL_GRAVITY_M_S2 / (4.f * SL_D(kf_n_per_rad2s2, 0)));
    for (int a = 0; a < 3; a++) {
        SL_D(pos_enu_m, a) = SL_D(prev_pos_enu_m, a) = r.p[a];
        SL_D(vel_enu_m_s, a) = on_ground ? 0.f : t->init_speed_max_m_s * (2.f * sl_uniform(rng) - 1.f) * 0.57735f;
        SL_D(omega_flu_rad_s, a) = on_ground ? 0.f : t->init_rate_max_rad_s * (2.f * sl_uniform(rng) - 1.f) * 0.57735f;
    }
    for (int a = 0; a < 4; a++) {
        SL_D(quat_wxyz, a) = q[a];
        /* in the air, rotors spin at the true hover speed; on the ground, at idle */
        SL_D(rotor_rad_s, a) = on_ground ? SL_D(nom_omega_min, 0) * SL_D(omega_scale, 0)
                                         : sl_min(omega_hover, SL_D(omega_max_rad_s, 0));
    }
    float a0 = on_ground ? -1.f : SL_D(hover_action, 0);
    float held[4] = {a0, a0, a0, a0};
    if (e->action_mode == SL_ACTION_CTBR) held[1] = held[2] = held[3] = 0.f;
    sl_settle_commands(e, i, held);

    SL_D(episode_s, 0) = t->episode_s;
    SL_D(next_gate, 0) = (float)r.first_gate;
    SL_D(gates_passed, 0) = SL_D(gates_to_pass, 0) = 0.f;
    fn->target(e, rng, &r);
    for (int a = 0; a < 3; a++) {
        SL_D(move_centre_enu_m, a) = r.c[a]; SL_D(move_amp_m, a) = r.amp[a];
        SL_D(move_w_rad_s, a) = r.w[a]; SL_D(move_phase_rad, a) = r.phase[a];
    }
    sl_target_at(F, np, i, 0.f);
    float d0[3] = {SL_D(target_enu_m, 0) - r.p[0], SL_D(target_enu_m, 1) - r.p[1], SL_D(target_enu_m, 2) - r.p[2]};
    SL_D(prev_dist_m, 0) = sl_norm3(d0);
    SL_D(time_s, 0) = SL_D(hold_s, 0) = SL_D(track_s, 0) = SL_D(ep_return, 0) = SL_D(ep_success, 0) = 0.f;
    SL_D(collided, 0) = 0.f;
    SL_D(time_to_target_s, 0) = -1.f;
    sl_load_next_gates(e, i);
}

/* ============================================================================================
 * 3. Reward, termination and records.
 * ========================================================================================== */

/* 1 when a drone at (x, y, z) has left the task's box (beyond |x|, |y| or above the ceiling): a crash. */
SL_INLINE float sl_outside_box(const float b[3], float x, float y, float z) {
    return (fabsf(x) > b[0]) | (fabsf(y) > b[1]) | (z > b[2]) ? 1.f : 0.f;
}

/* Surface distance from a drone (centre p, radius r) to gate g's frame: a flat ring in the gate's
 * plane between the opening (half sizes) and the opening grown by frame_m (sl_gate_event's rule).
 * Negative: touching it. */
SL_INLINE float sl_gate_frame_clearance(const float *g, const float p[3], float r, float frame_m) {
    float off[3] = {p[0] - g[0], p[1] - g[1], p[2] - g[2]};
    float s = off[0] * g[3] + off[1] * g[4] + off[2] * g[5];
    float u = fabsf(-g[4] * off[0] + g[3] * off[1]), v = fabsf(off[2]);
    float hw = g[SL_GATE_HALF_WIDTH], hh = g[SL_GATE_HALF_HEIGHT];
    float du = sl_max(u - hw - frame_m, 0.f), dv = sl_max(v - hh - frame_m, 0.f);
    float in_plane = u < hw && v < hh ? sl_min(hw - u, hh - v) : sqrtf(du * du + dv * dv);
    return sqrtf(s * s + in_plane * in_plane) - r;
}

/* The shaping terms that need a drone's own gates or neighbours (so they stay out of the branch-free
 * reward loop): progress along the line from the gate last passed (at the start: along the next
 * gate's normal) to the next gate, and the clearance penalty near any gate frame or the nearest
 * obstacle (a sphere or another drone). Both 0 unless their task field is set. */
static float sl_shaping(const SlTaskConfig *t, const float *F, int np, int i, float dt, const float *gates, int n_gates,
                        int next, const float p0[3], const float p1[3]) {
    const float r = SL_D(radius_m, 0);
    float out = 0.f;
    if (t->reward_gate_progress_per_m > 0.f && next >= 0 && n_gates > 0) {
        const float *b = gates + next * SL_GATE_FLOATS, *a = gates + ((next + n_gates - 1) % n_gates) * SL_GATE_FLOATS;
        float u[3] = {b[3], b[4], b[5]};
        if (SL_D(gates_passed, 0) > 0.f && n_gates > 1) {
            float len = sl_max(sl_dist3(a, b), 1e-3f);
            for (int k = 0; k < 3; k++) u[k] = (b[k] - a[k]) / len;
        }
        out += t->reward_gate_progress_per_m * ((p1[0] - p0[0]) * u[0] + (p1[1] - p0[1]) * u[1] + (p1[2] - p0[2]) * u[2]);
    }
    if (t->reward_clearance_per_s > 0.f) {
        float d = 1e30f;
        for (int k = 0; k < n_gates; k++) d = sl_min(d, sl_gate_frame_clearance(gates + k * SL_GATE_FLOATS, p1, r, t->gate_frame_m));
        if (SL_D(near_count, 0) > 0.f) {
            const float c[3] = {SL_D(near, 0), SL_D(near, 1), SL_D(near, 2)};
            d = sl_min(d, sl_dist3(p1, c) - SL_D(near, 3) - r);
        }
        float closeness = sl_max(1.f - sl_max(d, 0.f) / t->clearance_m, 0.f);
        out -= dt * t->reward_clearance_per_s * closeness * closeness;
    }
    return out;
}

/* Rewards, terminations and the running episode statistics of drones i0..i1-1, after the
 * physics and sensing. The caller resets the drones whose episode ended. Three passes: the
 * events only some drones have (a moving target, gates), then the reward loop, which has no
 * branches and vectorizes across drones, then the races whose next gate was passed. */
static void sl_task(SlEnv *e, const int i0, const int i1) {
    const SlTaskConfig t = e->task;
    float *restrict F = e->f;
    float *restrict rewards = e->rewards;
    uint8_t *restrict terminals = e->terminals, *restrict truncations = e->truncations;
    const int np = e->n_pad;
    const float dt = e->control_dt_s;
    SlGateColumns columns; /* a shared space's gates, for the crossings a vector at a time */
    int columns_space = -1;
    for (int i = i0; i < i1; i++) {
        const int goal = (int)SL_D(goal, 0), space = e->space_size == 1 ? i : i / e->space_size; /* no division in own worlds */
        if (goal == SL_GOAL_TRACK) sl_target_at(F, np, i, SL_D(time_s, 0) + dt);
        /* gates: any frame is solid; the next gate of a race is passed forwards only (backwards
         * through it is a crash); the openings of the others are air, either way */
        float event = 0.f;
        const float *gates = e->gates + (size_t)space * SL_MAX_GATES * SL_GATE_FLOATS;
        const float p0[3] = {SL_D(prev_pos_enu_m, 0), SL_D(prev_pos_enu_m, 1), SL_D(prev_pos_enu_m, 2)};
        const float p1[3] = {SL_D(pos_enu_m, 0), SL_D(pos_enu_m, 1), SL_D(pos_enu_m, 2)};
        const int next = goal == SL_GOAL_GATES ? (int)SL_D(next_gate, 0) : -1, n_gates = e->n_gates[space];
        /* in a shared space, only the gates whose plane the path crosses (rarely any) are checked in
         * full; the others give 0, which changes nothing, so the event is the same */
        uint32_t crossed = (1u << n_gates) - 1u; /* own world: every gate (n_gates <= SL_MAX_GATES = 16) */
        if (e->space_size > 1 && n_gates > 0) {
            if (space != columns_space) { sl_gate_columns(gates, n_gates, &columns); columns_space = space; }
            crossed = sl_gate_crossings(&columns, p0, p1);
        }
        for (uint32_t bits = crossed; bits; bits &= bits - 1) {
            const int k = __builtin_ctz(bits);
            int ev = sl_gate_event(gates + k * SL_GATE_FLOATS, p0, p1, SL_D(radius_m, 0), t.gate_frame_m);
            if (k == next && ev > 0) event = event < 0.f ? event : 1.f;
            else if (ev == -2 || (k == next && ev != 0)) event = k == next ? -1.f : -2.f; /* whose frame */
        }
        SL_D(gate_event, 0) = event;
        rewards[i] = sl_shaping(&t, F, np, i, dt, gates, e->n_gates[space], next, p0, p1); /* the reward loop adds the rest */
    }
#pragma GCC ivdep
    for (int i = i0; i < i1; i++) {
        const float goal = SL_D(goal, 0);
        const float race = goal == (float)SL_GOAL_GATES ? 1.f : 0.f;
        const float moving = goal == (float)SL_GOAL_TRACK ? 1.f : 0.f;
        const float time = SL_D(time_s, 0) + dt;
        const float passed = SL_D(gate_event, 0) > 0.f ? 1.f : 0.f, hit_gate = SL_D(gate_event, 0) < 0.f ? 1.f : 0.f;
        float d[3], v2 = 0.f, w2 = 0.f, da2 = 0.f;
        for (int a = 0; a < 3; a++) {
            d[a] = SL_D(target_enu_m, a) - SL_D(pos_enu_m, a);
            float dv = SL_D(vel_enu_m_s, a) - SL_D(target_vel_enu_m_s, a); /* still relative to the target */
            v2 += dv * dv;
            w2 += SL_D(omega_flu_rad_s, a) * SL_D(omega_flu_rad_s, a);
        }
        for (int m = 0; m < 4; m++) {
            float diff = SL_D(action_now, m) - SL_D(action_hist, m); /* the action just stepped (rows: no gather) */
            da2 += diff * diff;
        }
        float dist = sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
        /* Flags are floats 0 / 1 and every load happens before the selects: no branches. */
        float out = sl_outside_box(t.bounds_m, SL_D(pos_enu_m, 0), SL_D(pos_enu_m, 1), SL_D(pos_enu_m, 2));
        float nan_state = dist < 1e6f ? 0.f : 1.f; /* a NaN (or absurd) state is a crash too */
        float crash = sl_max(sl_max(sl_max(SL_D(crashed, 0), out), nan_state), sl_max(SL_D(collided, 0), hit_gate));
        float radius = moving > 0.f ? t.track_radius_m : t.success_radius_m;
        float inside = dist < radius ? 1.f : 0.f;
        float still = v2 < t.success_speed_m_s * t.success_speed_m_s ? 1.f : 0.f;
        float hold = inside * still * (SL_D(hold_s, 0) + dt);
        float track = SL_D(track_s, 0) + inside * dt;
        float ttt = SL_D(time_to_target_s, 0);
        float gates_passed = SL_D(gates_passed, 0) + passed;

        float r = dt * t.reward_alive_per_s + t.reward_progress_per_m * (SL_D(prev_dist_m, 0) - dist) - dt * t.reward_dist_per_m_s * dist +
                  inside * still * dt * t.reward_hold_per_s - dt * t.reward_rate_per_rad2_s * w2 -
                  dt * t.reward_action_change_per_s * da2 + passed * t.reward_gate - race * dt * t.reward_race_time_per_s + rewards[i];
        r = crash > 0.f ? (r == r ? r : 0.f) - t.reward_crash : r;
        float timeout = time >= SL_D(episode_s, 0) - 0.5f * dt ? 1.f : 0.f;
        float won_race = gates_passed >= SL_D(gates_to_pass, 0) ? 1.f : 0.f;
        float tracked = timeout * (1.f - crash) * (track >= t.track_success_frac * time ? 1.f : 0.f);
        float held = sl_max(SL_D(ep_success, 0), hold >= t.hold_s ? 1.f : 0.f); /* once held, stays */
        float success = race > 0.f ? won_race : moving > 0.f ? tracked : held;
        /* time to target: the first time inside the radius; for a race, its finishing time */
        SL_D(time_to_target_s, 0) = race * success > 0.f ? time : inside > 0.f && ttt < 0.f && race == 0.f ? time : ttt;
        float term = sl_max(crash, success * sl_max(race, t.end_on_success));
        float trunc = (1.f - term) * timeout;
        rewards[i] = r;
        terminals[i] = (uint8_t)term;
        truncations[i] = (uint8_t)trunc;
        SL_D(prev_dist_m, 0) = dist;
        SL_D(time_s, 0) = time;
        SL_D(hold_s, 0) = hold;
        SL_D(track_s, 0) = track;
        SL_D(gates_passed, 0) = gates_passed;
        SL_D(ep_success, 0) = success;
        SL_D(ep_return, 0) += r;
        SL_D(collided, 0) = sl_max(SL_D(collided, 0), hit_gate); /* for the record: what ended it */
        /* action history: newest first */
        for (int k = SL_ACTION_HISTORY - 1; k > 0; k--)
            for (int m = 0; m < 4; m++) SL_D(action_hist, k * 4 + m) = SL_D(action_hist, (k - 1) * 4 + m);
        for (int m = 0; m < 4; m++) SL_D(action_hist, m) = SL_D(action_now, m);
    }
    for (int i = i0; i < i1; i++) {
        if (!(SL_D(gate_event, 0) > 0.f) || terminals[i]) continue;
        /* on to the next gate: the target jumps, and progress counts from there */
        const int space = i / e->space_size, next = ((int)SL_D(next_gate, 0) + 1) % e->n_gates[space];
        const float *g = e->gates + ((size_t)space * SL_MAX_GATES + next) * SL_GATE_FLOATS;
        SL_D(next_gate, 0) = (float)next;
        float dn[3];
        for (int a = 0; a < 3; a++) {
            SL_D(move_centre_enu_m, a) = SL_D(target_enu_m, a) = g[a];
            dn[a] = g[a] - SL_D(pos_enu_m, a);
        }
        SL_D(prev_dist_m, 0) = sl_norm3(dn);
        sl_load_next_gates(e, i);
    }
}

/* What ended drone i's crashed episode (SL_CRASH_CAUSES), from its last step's state, as the
 * reward loop judged it: a NaN state first, then a gate's frame, a sphere or drone, the ground. */
static int sl_crash_cause(const SlEnv *e, int i) {
    const float *F = e->f;
    const int np = e->n_pad;
    float d2 = 0.f;
    for (int a = 0; a < 3; a++) {
        const float d = SL_D(target_enu_m, a) - SL_D(pos_enu_m, a);
        d2 += d * d;
    }
    if (!(sqrtf(d2) < 1e6f)) return SL_CRASH_nan_state; /* the reward loop's rule */
    if (SL_D(gate_event, 0) == -1.f) return SL_CRASH_next_gate_frame;
    if (SL_D(gate_event, 0) == -2.f) return SL_CRASH_other_gate_frame;
    if (SL_D(collided, 0) > 0.f) return SL_CRASH_obstacle_or_drone;
    if (SL_D(crashed, 0) > 0.f) return SL_CRASH_ground;
    return sl_outside_box(e->task.bounds_m, SL_D(pos_enu_m, 0), SL_D(pos_enu_m, 1), SL_D(pos_enu_m, 2)) > 0.f
               ? SL_CRASH_out_of_bounds : SL_CRASH_none;
}

/* Writes the record of drone i's finished episode. */
static void sl_record_episode(SlEnv *e, int i) {
    float *F = e->f;
    const int np = e->n_pad;
    SL_D(last_return, 0) = SL_D(ep_return, 0);
    SL_D(last_length_s, 0) = SL_D(time_s, 0);
    SL_D(last_success, 0) = SL_D(ep_success, 0);
    SL_D(last_crash, 0) = (float)e->terminals[i] * (SL_D(ep_success, 0) > 0.f && (e->task.end_on_success > 0.f || SL_D(goal, 0) == (float)SL_GOAL_GATES) ? 0.f : 1.f);
    SL_D(last_time_to_target_s, 0) = SL_D(time_to_target_s, 0);
    SL_D(last_final_error_m, 0) = SL_D(prev_dist_m, 0);
    SL_D(last_arm_m, 0) = SL_D(arm_m, 0);
    SL_D(last_mass_kg, 0) = SL_D(mass_kg, 0);
    SL_D(last_task, 0) = SL_D(task_id, 0);
    SL_D(last_gates, 0) = SL_D(gates_passed, 0);
    SL_D(last_collision, 0) = SL_D(last_crash, 0) * SL_D(collided, 0);
    SL_D(last_crash_cause, 0) = SL_D(last_crash, 0) > 0.f ? (float)sl_crash_cause(e, i) : (float)SL_CRASH_none;
}

#endif /* SKYLOOP_TASKS_H */
