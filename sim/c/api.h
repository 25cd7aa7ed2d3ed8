/* api.h -- what Python calls (through cffi, sim/build_ffi.py): checking a configuration, making,
 * resetting and stepping an environment, the single-drone entry points (observation from
 * telemetry, the gate rule, neighbours, one motor on a stand) and the tables.
 */
#ifndef SKYLOOP_API_H
#define SKYLOOP_API_H

#include "tasks.h"
#include <unistd.h>

/* ============================================================================================
 * The API (called from Python through cffi).
 * ========================================================================================== */

/* The core's L2 cache in bytes (glibc reads it from the CPU; 1 MiB where it cannot say). */
static size_t sl_l2_bytes(void) {
#ifdef _SC_LEVEL2_CACHE_SIZE
    long b = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (b > 0) return (size_t)b;
#endif
    return (size_t)1 << 20;
}

/* Checks a struct against its field table; writes the first problem into err. */
static int sl_check_fields(const void *base, const SlField *fields, int n, const char *what, char *err, int errlen) {
    for (int f = 0; f < n; f++)
        for (int c = 0; c < fields[f].count; c++) {
            float v = ((const float *)((const char *)base + fields[f].offset))[c];
            if (!(v >= fields[f].lo && v <= fields[f].hi)) {
                snprintf(err, (size_t)errlen, "%s.%s[%d] = %g is outside [%g, %g]", what, fields[f].name, c, (double)v,
                         (double)fields[f].lo, (double)fields[f].hi);
                return -1;
            }
        }
    return 0;
}

static int sl_check_config(const SlParams *p, const SlRandomization *r, const SlTaskConfig *t, int action_mode,
                           char *err, int errlen) {
    if (sl_check_fields(p, SL_PARAM_FIELDS, SL_N_PARAM_FIELDS, "params", err, errlen) ||
        sl_check_fields(r, SL_RANDOMIZATION_FIELDS, SL_N_RANDOMIZATION_FIELDS, "randomization", err, errlen) ||
        sl_check_fields(t, SL_TASK_FIELDS, SL_N_TASK_FIELDS, "task", err, errlen))
        return -1;
#define SL_REQUIRE(cond, ...) do { if (!(cond)) { snprintf(err, (size_t)errlen, __VA_ARGS__); return -1; } } while (0)
    SL_REQUIRE(action_mode == SL_ACTION_MOTOR || action_mode == SL_ACTION_CTBR,
               "action_mode %d is unknown: use 0 (motor) or 1 (ctbr)", action_mode);
    float substeps = 1.f / (t->control_hz * t->physics_dt_s);
    SL_REQUIRE(fabsf(substeps - roundf(substeps)) < 1e-3f * substeps && substeps >= 1.f,
               "task.control_hz = %g and task.physics_dt_s = %g: the control period must be a whole number of physics steps",
               (double)t->control_hz, (double)t->physics_dt_s);
    float max_delay = p->motor_delay_s * (1.f + r->motor_delay_frac);
    SL_REQUIRE(max_delay / t->physics_dt_s < (float)(SL_MAX_DELAY_SLOTS - 1) - 0.5f,
               "params.motor_delay_s with randomization reaches %g s; the sim holds at most %g s at physics_dt_s = %g",
               (double)max_delay, (double)((SL_MAX_DELAY_SLOTS - 2) * t->physics_dt_s), (double)t->physics_dt_s);
    SL_REQUIRE(r->latency_s_range[0] <= r->latency_s_range[1] && r->latency_s_range[1] <= 1.f / t->control_hz + 1e-6f,
               "randomization.latency_s_range [%g, %g] must be ordered and at most one control period (%g s)",
               (double)r->latency_s_range[0], (double)r->latency_s_range[1], 1.0 / (double)t->control_hz);
    SL_REQUIRE(r->arm_m_range[0] <= r->arm_m_range[1] && (r->arm_m_range[1] == 0.f || r->arm_m_range[0] > 0.f),
               "randomization.arm_m_range [%g, %g] must be ordered and positive, or [0, 0] for none",
               (double)r->arm_m_range[0], (double)r->arm_m_range[1]);
    SL_REQUIRE(r->arm_m_range[1] == 0.f || (r->thrust_to_weight_range[0] >= 1.05f && r->thrust_to_weight_range[0] <= r->thrust_to_weight_range[1]),
               "randomization.thrust_to_weight_range [%g, %g] must be ordered and above 1.05 when arm_m_range is set",
               (double)r->thrust_to_weight_range[0], (double)r->thrust_to_weight_range[1]);
    SL_REQUIRE(r->battery_v_frac_range[0] <= r->battery_v_frac_range[1], "randomization.battery_v_frac_range must be ordered");
    SL_REQUIRE(t->target_dist_m_range[0] <= t->target_dist_m_range[1], "task.target_dist_m_range must be ordered");
    float prob_sum = 0.f;
    for (int k = 0; k < SL_N_TASKS; k++) prob_sum += t->task_prob[k];
    SL_REQUIRE(prob_sum > 0.f, "task.task_prob is all zeros: give at least one task a positive probability");
    SL_REQUIRE(t->drones_per_space == floorf(t->drones_per_space), "task.drones_per_space = %g must be a whole number",
               (double)t->drones_per_space);
#define SL_ORDERED(f) SL_REQUIRE(t->f[0] <= t->f[1], "task." #f " [%g, %g] must be ordered", (double)t->f[0], (double)t->f[1])
    SL_ORDERED(gate_count_range); SL_ORDERED(gate_spacing_m_range); SL_ORDERED(orbit_radius_m_range);
    SL_ORDERED(orbit_speed_m_s_range); SL_ORDERED(obstacle_radius_m_range); SL_ORDERED(obstacle_goal_dist_m_range);
#undef SL_ORDERED
    float hover_thrust_frac = p->mass_kg * SL_GRAVITY_M_S2 / (4.f * p->kf_n_per_rad2s2 * p->omega_max_rad_s * p->omega_max_rad_s);
    SL_REQUIRE(hover_thrust_frac < 0.95f,
               "the profile cannot hover: 4 kf omega_max^2 = %g N is not above its weight %g N (check mass_kg, kf_n_per_rad2s2, omega_max_rad_s)",
               (double)(4.f * p->kf_n_per_rad2s2 * p->omega_max_rad_s * p->omega_max_rad_s), (double)(p->mass_kg * SL_GRAVITY_M_S2));
    float c_top = p->throttle_to_omega_rad_s[0] + p->throttle_to_omega_rad_s[1] + p->throttle_to_omega_rad_s[2];
    SL_REQUIRE(p->throttle_to_omega_rad_s[1] > 0.f && p->throttle_to_omega_rad_s[1] + 2.f * p->throttle_to_omega_rad_s[2] > 0.f &&
               p->throttle_to_omega_rad_s[0] >= 0.f && c_top > 0.f,
               "params.throttle_to_omega_rad_s must rise from c0 >= 0 over throttle 0..1 (c1 > 0, c1 + 2 c2 > 0)");
#undef SL_REQUIRE
    return 0;
}

void sl_env_free(SlEnv *e);

/* Creates an environment of n drones, or returns NULL with the reason in err. */
SlEnv *sl_env_new(int n, const SlParams *p, const SlRandomization *r, const SlTaskConfig *t, int action_mode,
                  char *err, int errlen) {
    if (n < 1 || n > (1 << 24)) { snprintf(err, (size_t)errlen, "number of drones %d must be in 1..16777216", n); return NULL; }
    if (sl_check_config(p, r, t, action_mode, err, errlen)) return NULL;
    SlEnv *e = (SlEnv *)calloc(1, sizeof(SlEnv));
    if (!e) { snprintf(err, (size_t)errlen, "out of memory"); return NULL; }
    e->bytes = sizeof(SlEnv);
    e->n = n;
    /* whole vectors, and an odd number of them: rows a power of two apart (n = 1024: 4 KiB) map
     * to the same cache sets and evict each other */
    const int groups = (n + SL_LANES - 1) / SL_LANES;
    e->n_pad = (groups | 1) * SL_LANES;
    e->action_mode = action_mode;
    e->nominal = *p;
    e->rnd = *r;
    e->task = *t;
    e->dt_s = t->physics_dt_s;
    e->substeps = (int)lrintf(1.f / (t->control_hz * t->physics_dt_s));
    e->control_dt_s = e->dt_s * (float)e->substeps;
    e->space_size = (int)t->drones_per_space < n ? (int)t->drones_per_space : n;
    e->n_spaces = (n + e->space_size - 1) / e->space_size;
    float cdf = 0.f, prob_sum = 0.f;
    for (int k = 0; k < SL_N_TASKS; k++) prob_sum += t->task_prob[k];
    for (int k = 0; k < SL_N_TASKS; k++) e->task_cdf[k] = (cdf += t->task_prob[k] / prob_sum);
    size_t np = (size_t)e->n_pad, ns = (size_t)e->n_spaces;
#define SL_ALLOC(ptr, type, count)                                                                 \
    do {                                                                                           \
        size_t sz = ((count) * sizeof(type) + 63) / 64 * 64;                                       \
        ptr = (type *)aligned_alloc(64, sz);                                                       \
        if (!ptr) { snprintf(err, (size_t)errlen, "out of memory"); sl_env_free(e); return NULL; } \
        memset(ptr, 0, sz);                                                                        \
        e->bytes += sz;                                                                            \
    } while (0)
    SL_ALLOC(e->obs, float, np * SL_OBS_SIZE);
    SL_ALLOC(e->final_obs, float, np * SL_OBS_SIZE);
    SL_ALLOC(e->actions, float, np * 4);
    SL_ALLOC(e->rewards, float, np);
    SL_ALLOC(e->terminals, uint8_t, np);
    SL_ALLOC(e->truncations, uint8_t, np);
    SL_ALLOC(e->f, float, np * SL_N_ROWS);
    SL_ALLOC(e->rng, uint32_t, np);
    uint32_t slots = SL_DELAY_SLOTS;   /* enough for the longest randomized delay, in whole physics steps */
    while ((float)(slots - 1) - 0.5f <= p->motor_delay_s * (1.f + r->motor_delay_frac) / t->physics_dt_s) slots *= 2;
    e->delay_mask = slots - 1;
    SL_ALLOC(e->ring, float, (size_t)slots * 4 * ((np + SL_BLOCK - 1) / SL_BLOCK * SL_BLOCK)); /* SL_RING_INDEX */
    SL_ALLOC(e->block, float, (size_t)SL_N_ROWS * SL_BLOCK);
    SL_ALLOC(e->gates, float, ns * SL_MAX_GATES * SL_GATE_FLOATS);
    SL_ALLOC(e->n_gates, int, ns);
    SL_ALLOC(e->obstacles, float, ns * SL_MAX_OBSTACLES * 4);
    SL_ALLOC(e->n_obstacles, int, ns);
    SL_ALLOC(e->formation, float, ns * (size_t)e->space_size * 3);
    SL_ALLOC(e->space_rng, uint32_t, ns);
#undef SL_ALLOC
    e->prefetch_obs = (np * SL_OBS_SIZE + np * SL_N_ROWS) * sizeof(float) > sl_l2_bytes();
    /* padding lanes hold a harmless resting drone, so vector code never divides by zero */
    float *F = e->f;
    for (int i = n; i < e->n_pad; i++) {
        SL_D(quat_wxyz, 0) = SL_D(mass_kg, 0) = SL_D(nom_kf, 0) = SL_D(omega_scale, 0) = 1.f;
        SL_D(motor_tau_up_s, 0) = SL_D(motor_tau_down_s, 0) = 1.f;
        for (int a = 0; a < 3; a++) SL_D(inertia_kg_m2, a) = 1.f;
    }
    return e;
}

void sl_env_free(SlEnv *e) {
    if (!e) return;
    free(e->obs); free(e->final_obs); free(e->actions); free(e->rewards); free(e->terminals); free(e->truncations);
    free(e->f); free(e->rng); free(e->ring); free(e->block);
    free(e->gates); free(e->n_gates); free(e->obstacles); free(e->n_obstacles); free(e->formation); free(e->space_rng);
    free(e);
}

/* Bytes this environment allocated (every array, its padding and its shared spaces included). */
size_t sl_env_bytes(const SlEnv *e) { return e->bytes; }

/* RK4 substeps of real drones the physics kernels integrated since the environment was made. */
uint64_t sl_env_substeps_integrated(const SlEnv *e) { return e->substeps_integrated; }

/* What this build targets: the instruction set and the vector width (bytes), from the compiler's macros. */
const char *sl_build_target(int *vector_bytes) { *vector_bytes = SL_VECTOR_BYTES; return SL_ISA; }

/* 1: step physics with the scalar reference (drone by drone, not vectorized); 0: the vector kernel. */
void sl_env_set_reference(SlEnv *e, int on) { e->reference = on != 0; }

/* Starts a new episode for every drone; the same seed gives the same rollout. */
void sl_env_reset(SlEnv *e, uint64_t seed) {
    e->head = 0;
    for (int space = 0; space < e->n_spaces; space++) {
        e->space_rng[space] = sl_seed_stream(seed ^ 0x5FACE5ull, (uint64_t)space);
        if (e->space_size > 1) sl_draw_space(e, space);
    }
    for (int i = 0; i < e->n; i++) { /* far away until placed, so the drones placed first are not blocked */
        float *F = e->f;
        const int np = e->n_pad;
        SL_D(pos_enu_m, 2) = 1e6f;
    }
    for (int i = 0; i < e->n; i++) {
        e->rng[i] = sl_seed_stream(seed, (uint64_t)i);
        sl_reset_drone(e, i);
        e->terminals[i] = e->truncations[i] = 0;
        e->rewards[i] = 0.f;
    }
    for (int i = 0; i < e->n; i++) sl_sense_one(e, i);
    sl_observe_range(e, 0, e->n);
}

/* Returns 0, or 1 + the flat index of the first action that is NaN or outside [-1, 1]. */
static long sl_check_actions(const SlEnv *e) {
    const float *restrict a = e->actions;
    long n4 = (long)e->n * 4, bad = 0;
    for (long k = 0; k < n4; k++) bad += !(a[k] >= -1.f && a[k] <= 1.f);
    if (!bad) return 0;
    for (long k = 0; k < n4; k++)
        if (!(a[k] >= -1.f && a[k] <= 1.f)) return k + 1;
    return 0;
}

/* Physics for every drone, block by block; `then(e, i0, i1)` runs on each block while it is
 * still in cache. */
typedef void (*SlBlockFn)(SlEnv *e, int i0, int i1);
static void sl_step_blocks(SlEnv *e, SlBlockFn then) {
    for (int i0 = 0; i0 < e->n; i0 += SL_BLOCK) {
        const int i1 = i0 + SL_BLOCK < e->n ? i0 + SL_BLOCK : e->n;
        if (e->reference) sl_physics_reference(e, i0, i1);
        else if (e->action_mode == SL_ACTION_MOTOR) sl_physics(e, SL_ACTION_MOTOR, i0, i1, then != NULL && e->prefetch_obs);
        else sl_physics(e, SL_ACTION_CTBR, i0, i1, then != NULL && e->prefetch_obs);
        if (then) then(e, i0, i1);
    }
    e->head = (e->head + (uint32_t)e->substeps) & e->delay_mask;
}

/* After the physics of a block, with the task: rewards and terminations, then finished episodes
 * keep their last observation (final_obs) and record (last_*) and start anew, then observations. */
static void sl_after_physics_task(SlEnv *e, int i0, int i1) {
    if (e->space_size == 1) /* shared spaces sensed all at once before this (sl_sense_spaces) */
        for (int i = i0; i < i1; i++) sl_sense_one(e, i);
    sl_task(e, i0, i1);
    for (int i = i0; i < i1; i++)
        if (e->terminals[i] | e->truncations[i]) {
            sl_observe_drone(&e->rnd, e->f, e->n_pad, i, &e->rng[i], e->final_obs + (size_t)i * SL_OBS_SIZE, 1, 1);
            sl_record_episode(e, i);
            sl_reset_drone(e, i);
            sl_sense_one(e, i);
        }
    sl_observe_range(e, i0, i1);
}

/* After the physics of a block, without the task (replay): the action history and observations. */
static void sl_after_physics_only(SlEnv *e, int i0, int i1) {
    float *F = e->f;
    const int np = e->n_pad;
    for (int i = i0; i < i1; i++) {
        for (int k = SL_ACTION_HISTORY - 1; k > 0; k--)
            for (int m = 0; m < 4; m++) SL_D(action_hist, k * 4 + m) = SL_D(action_hist, (k - 1) * 4 + m);
        for (int m = 0; m < 4; m++) SL_D(action_hist, m) = SL_D(action_now, m); /* the action just stepped, as a row */
    }
    sl_observe_range(e, i0, i1);
}

/* One agent step for all drones: physics, rewards, terminations, automatic reset of finished
 * episodes, observations. Reads e->actions. Returns 0, or 1 + the flat index of an invalid
 * action (then nothing was changed). */
long sl_env_step(SlEnv *e) {
    long bad = sl_check_actions(e);
    if (bad) return bad;
    if (e->space_size == 1) {
        sl_step_blocks(e, sl_after_physics_task); /* each block finished while in cache */
        return 0;
    }
    sl_step_blocks(e, NULL);                      /* every drone moves, then all sense, then the tasks */
    if (sl_sense_spaces(e)) return -1;
    for (int i0 = 0; i0 < e->n; i0 += SL_BLOCK) sl_after_physics_task(e, i0, i0 + SL_BLOCK < e->n ? i0 + SL_BLOCK : e->n);
    return 0;
}

/* Sets the course every race flies (gates [n][SL_GATE_FLOATS], world ENU of the env's box);
 * n = 0 goes back to random courses. Takes effect at the next reset. Returns 0, or -1 with the
 * reason in err. */
int sl_env_set_course(SlEnv *e, int n, const float *gates, char *err, int errlen) {
    if (n < 0 || n > SL_MAX_GATES) { snprintf(err, (size_t)errlen, "a course has 1 to %d gates, got %d", SL_MAX_GATES, n); return -1; }
    for (int k = 0; k < n; k++) {
        const float *g = gates + k * SL_GATE_FLOATS;
        float nn = g[3] * g[3] + g[4] * g[4] + g[5] * g[5];
        int inside = fabsf(g[0]) <= e->task.bounds_m[0] && fabsf(g[1]) <= e->task.bounds_m[1] && g[2] - g[SL_GATE_HALF_HEIGHT] >= 0.f &&
                     g[2] + g[SL_GATE_HALF_HEIGHT] <= e->task.bounds_m[2];
        if (!(fabsf(nn - 1.f) < 1e-3f) || !(g[SL_GATE_HALF_WIDTH] > 0.f && g[SL_GATE_HALF_HEIGHT] > 0.f) || !inside) {
            snprintf(err, (size_t)errlen, "gate %d: centre (%g, %g, %g), half size (%g, %g): needs a unit normal, a positive size "
                     "and to lie inside the task's bounds_m (%g, %g, %g)", k, (double)g[0], (double)g[1], (double)g[2],
                     (double)g[SL_GATE_HALF_WIDTH], (double)g[SL_GATE_HALF_HEIGHT], (double)e->task.bounds_m[0], (double)e->task.bounds_m[1], (double)e->task.bounds_m[2]);
            return -1;
        }
    }
    memset(e->course, 0, sizeof e->course);
    memcpy(e->course, gates, (size_t)n * SL_GATE_FLOATS * sizeof(float));
    e->course_n = n;
    return 0;
}

/* One control step of physics only (no reward, termination or reset): for replaying logged
 * commands from a set state. Still builds observations. Same return as sl_env_step. */
long sl_env_step_physics(SlEnv *e) {
    long bad = sl_check_actions(e);
    if (bad) return bad;
    sl_step_blocks(e, sl_after_physics_only);
    return 0;
}

/* Changes the task of a live env for the episodes drawn from now on (the curriculum). The time step,
 * control rate and drones per space size the env and cannot change. Returns 0, or -1 with the reason in err. */
int sl_env_set_task(SlEnv *e, const SlTaskConfig *t, char *err, int errlen) {
    if (sl_check_config(&e->nominal, &e->rnd, t, e->action_mode, err, errlen)) return -1;
    if (t->physics_dt_s != e->task.physics_dt_s || t->control_hz != e->task.control_hz || t->drones_per_space != e->task.drones_per_space) {
        snprintf(err, (size_t)errlen, "task.physics_dt_s, control_hz and drones_per_space cannot change in a live env (make a new one)");
        return -1;
    }
    e->task = *t;
    float cdf = 0.f, prob_sum = 0.f;
    for (int k = 0; k < SL_N_TASKS; k++) prob_sum += t->task_prob[k];
    for (int k = 0; k < SL_N_TASKS; k++) e->task_cdf[k] = (cdf += t->task_prob[k] / prob_sum);
    return 0;
}

/* After Python wrote a drone's state or parameters: renormalize the attitude, refresh what is
 * derived, and fill the command history as if the current rotor speeds had been commanded all
 * along (with `held` as the action that commanded them). */
void sl_env_sync_drone(SlEnv *e, int i, const float held[4]) {
    float *F = e->f;
    const int np = e->n_pad;
    float qn = 0.f;
    for (int a = 0; a < 4; a++) qn += SL_D(quat_wxyz, a) * SL_D(quat_wxyz, a);
    for (int a = 0; a < 4; a++) SL_D(quat_wxyz, a) /= sqrtf(qn);
    sl_derive_drone(e, i);
    sl_settle_commands(e, i, held);
}

/* The observation of one drone from telemetry: the flight runner's entry point, so a real
 * vehicle's observation is built by the same code as the sim's. */
void sl_observe_state(const float pos_enu_m[3], const float vel_enu_m_s[3], const float quat_wxyz[4],
                      const float omega_flu_rad_s[3], const float target_enu_m[3], const float *last_actions,
                      float hover_action, const float target_vel_enu_m_s[3], const float *gates, int n_gates,
                      const float *obstacles, int n_obstacles, float *out) {
    SlObsInput in;
    memset(&in, 0, sizeof in);
    memcpy(in.target_vel_enu_m_s, target_vel_enu_m_s, sizeof in.target_vel_enu_m_s);
    n_gates = n_gates < 0 ? 0 : n_gates > SL_OBS_GATES ? SL_OBS_GATES : n_gates;
    n_obstacles = n_obstacles < 0 ? 0 : n_obstacles > SL_OBS_OBSTACLES ? SL_OBS_OBSTACLES : n_obstacles;
    memcpy(in.gates, gates, (size_t)n_gates * SL_GATE_FLOATS * sizeof(float));
    memcpy(in.near, obstacles, (size_t)n_obstacles * 4 * sizeof(float));
    in.n_gates = (float)n_gates;
    in.n_near = (float)n_obstacles;
    memcpy(in.pos_enu_m, pos_enu_m, sizeof in.pos_enu_m);
    memcpy(in.vel_enu_m_s, vel_enu_m_s, sizeof in.vel_enu_m_s);
    memcpy(in.quat_wxyz, quat_wxyz, sizeof in.quat_wxyz);
    memcpy(in.omega_flu_rad_s, omega_flu_rad_s, sizeof in.omega_flu_rad_s);
    memcpy(in.target_enu_m, target_enu_m, sizeof in.target_enu_m);
    memcpy(in.last_actions, last_actions, sizeof in.last_actions);
    in.hover_action = hover_action;
    sl_observe(&in, out, 1, 1);
}

/* The tables, for the binding. */
const SlField *sl_param_fields(int *n) { *n = SL_N_PARAM_FIELDS; return SL_PARAM_FIELDS; }
const SlField *sl_randomization_fields(int *n) { *n = SL_N_RANDOMIZATION_FIELDS; return SL_RANDOMIZATION_FIELDS; }
const SlField *sl_task_fields(int *n) { *n = SL_N_TASK_FIELDS; return SL_TASK_FIELDS; }
const SlObsField *sl_obs_fields(int *n) { *n = SL_N_OBS_FIELDS; return SL_OBS_TABLE; }
const SlDroneField *sl_drone_fields(int *n) { *n = SL_N_DRONE_FIELDS; return SL_DRONE_TABLE; }
/* The sim's gate rule for one path segment (for tests and the flight runner): +1 passed, -1 went
 * through backwards, -2 hit the frame, 0 did not cross within the frame. */
int sl_gate_check(const float gate[SL_GATE_FLOATS], const float p0[3], const float p1[3], float radius_m, float frame_m) {
    return sl_gate_event(gate, p0, p1, radius_m, frame_m);
}
/* The default task configuration (every field). */
void sl_task_defaults(SlTaskConfig *t) { *t = SL_TASK_DEFAULTS; }

/* The throttle (0..1) whose steady rotor speed on curve c0 + c1 u + c2 u^2 is omega[k], for n speeds. */
void sl_throttle_for_omega_n(const float curve[3], const float *omega, int n, float *throttle) {
    for (int k = 0; k < n; k++) throttle[k] = sl_clamp(sl_throttle_for_omega(curve, omega[k]), 0.f, 1.f);
}

const char *sl_task_name(int k) { return k >= 0 && k < SL_N_TASKS ? SL_TASK_NAMES[k] : NULL; }
const char *sl_crash_cause_name(int k) { return k >= 0 && k < SL_N_CRASH_CAUSES ? SL_CRASH_CAUSE_NAMES[k] : NULL; }

#endif /* SKYLOOP_API_H */

