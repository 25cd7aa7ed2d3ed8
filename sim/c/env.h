/* env.h -- N drones laid out for the vector unit: the task configuration (time step, the mix, the
 * shared spaces), the observation layout, every per-drone number as rows of one block, the physics
 * kernel (vectorized across drones, with its scalar reference), observations and the per-episode
 * draw of each drone from its profile.
 *
 * Memory layout: every per-drone quantity is a structure of arrays (SoA). A field of width W
 * lives in one float block [W][n_pad], so component c of drone i is field[c * n_pad + i]. The
 * kernels copy a block of SL_BLOCK drones into a working set at fixed offsets and run over its
 * drones with no branches (only selects), SL_LANES drones per instruction.
 */
#ifndef SKYLOOP_ENV_H
#define SKYLOOP_ENV_H

#include "physics.h"

/* ============================================================================================
 * 1. Sizes, the tasks, and their configuration
 * ========================================================================================== */
#define SL_BLOCK 64            /* drones stepped together through a control step (cache blocking; a multiple of SL_LANES) */
#define SL_DELAY_SELECT_MAX 8  /* a block whose delays spread over more physics steps reads the ring with a gather */
#define SL_DELAY_SLOTS 32      /* motor-command ring buffer, in physics steps (power of two): the least */
#define SL_MAX_DELAY_SLOTS 8192 /* ... and the most (longer delays at a finer physics_dt_s are refused) */
#define SL_ACTION_HISTORY 2    /* K: the last K actions are part of the observation */
#define SL_ACTION_SIZE 4
#define SL_MAX_GATES 16        /* gates per course (at most 32: gate sets are bit masks) */
#define SL_MAX_OBSTACLES 32    /* sphere obstacles per space */
#define SL_OBS_GATES 2         /* K: the next K gates are observed */
#define SL_OBS_OBSTACLES 4     /* M: the nearest M obstacles (spheres and other drones) are observed */
#define SL_GATE_FLOATS 8       /* a gate: centre xyz (ENU), unit normal xyz (direction of flight), half width, half height */
#define SL_RADIUS_PER_ARM 1.5f /* a drone's collision radius: arm plus propeller, about 1.5 arm lengths */
enum { SL_GATE_CENTRE = 0, SL_GATE_NORMAL = 3, SL_GATE_HALF_WIDTH = 6, SL_GATE_HALF_HEIGHT = 7 }; /* a gate record's floats */

/* The tasks. Each reduces to "where should I be, and what must I avoid": a target (which may
 * move), the next gates, and the nearest obstacles, all in one observation layout. */
#define SL_TASKS(X) X(hover) X(race) X(orbit) X(follow) X(formation) X(obstacles)
#define SL_TASK_ENUM(name) SL_TASK_##name,
enum { SL_TASKS(SL_TASK_ENUM) SL_N_TASKS };
#undef SL_TASK_ENUM
#define SL_TASK_NAME(name) #name,
static const char *const SL_TASK_NAMES[] = {SL_TASKS(SL_TASK_NAME)};

/* What ended a crashed episode (the record's last_crash_cause; none: it did not crash). A gate's
 * frame is the next gate's (or backwards through its opening) or another gate's; obstacle_or_drone
 * is a sphere or another drone of the space; ground is a hard or tilted touchdown. */
#define SL_CRASH_CAUSES(X) X(none) X(next_gate_frame) X(other_gate_frame) X(obstacle_or_drone) X(ground) \
    X(out_of_bounds) X(nan_state)
#define SL_CRASH_ENUM(name) SL_CRASH_##name,
enum { SL_CRASH_CAUSES(SL_CRASH_ENUM) SL_N_CRASH_CAUSES };
#undef SL_CRASH_ENUM
static const char *const SL_CRASH_CAUSE_NAMES[] = {SL_CRASH_CAUSES(SL_TASK_NAME)};
#undef SL_TASK_NAME

/* How an episode is judged (each task's goal, in the task table of tasks.h). */
typedef enum {
    SL_GOAL_HOLD = 0,  /* reach the target and hold there (slower than success_speed) for hold_s */
    SL_GOAL_TRACK = 1, /* stay within track_radius of a moving target for track_success_frac of the episode */
    SL_GOAL_GATES = 2, /* pass the gates in order, forwards, for race_laps laps */
} SlGoal;

/* The tasks, their mix and the time step. */
typedef struct {
    float physics_dt_s;               /* RK4 step */
    float control_hz;                 /* agent steps per second; substeps = 1 / (hz * dt) */
    float bounds_m[3];                /* box |x| <= bx, |y| <= by, 0 <= z <= bz */
    float target_dist_m_range[2];     /* target drawn at this distance from the start */
    float success_radius_m;
    float success_speed_m_s;
    float hold_s;                     /* within radius and below speed for this long = success */
    float episode_s;
    float ground_start_prob;          /* fraction of episodes that start on the ground (take-off) */
    float init_tilt_max_rad;
    float init_speed_max_m_s;
    float init_rate_max_rad_s;
    float reward_alive_per_s;         /* reward per second of flight without a crash */
    float reward_progress_per_m;      /* reward for each metre closer to the target */
    float reward_dist_per_m_s;        /* penalty per metre of distance per second */
    float reward_hold_per_s;          /* bonus per second inside the success radius and slower than success_speed_m_s */
    float reward_rate_per_rad2_s;     /* penalty on |body rate|^2 per second */
    float reward_action_change_per_s; /* penalty on |a - a_prev|^2 per second */
    float reward_crash;               /* penalty on a crash or leaving the bounds */
    float end_on_success;             /* 1: the episode ends at success; 0: hold until timeout */
    /* the mix and the shared space */
    float task_prob[SL_N_TASKS];      /* probability of each task per episode (normalized), in SL_TASKS order */
    float drones_per_space;           /* 1: every drone in its own world; > 1: this many drones share a space and collide */
    float sense_range_m;              /* obstacles (and other drones) closer than this (surface to surface) are observed */
    /* race */
    float race_laps;
    float race_time_per_gate_s;       /* a race episode lasts this long per gate to pass */
    float gate_count_range[2];        /* random courses: number of gates */
    float gate_spacing_m_range[2];    /* ... distance between successive gates */
    float gate_turn_max_rad;          /* ... a gate's heading differs from its hop's by at most this */
    float gate_split_s_prob;          /* ... a gate is put under or over the last one, flown the other way (a split-S) */
    float gate_size_m;                /* ... inner side of the opening, plus 4 arm lengths of the drone drawn */
    float gate_frame_m;               /* width of a gate's frame around its opening (hitting it is a crash) */
    float reward_gate;                /* bonus per gate passed */
    float reward_race_time_per_s;     /* H18: race only: penalty per second until the last gate (0: off) */
    float reward_gate_progress_per_m; /* H18: race only: reward per metre flown along the line previous gate -> next gate (0: off) */
    float reward_clearance_per_s;     /* H18: penalty per second at contact with a gate frame or obstacle, falling as (1 - d / clearance_m)^2 (0: off) */
    float clearance_m;                /* H18: surface distance from which the clearance penalty starts */
    /* orbit and follow: a moving target c + A sin(W t + phase) */
    float orbit_radius_m_range[2];
    float orbit_speed_m_s_range[2];
    float follow_speed_m_s_max;
    float track_radius_m;             /* closer than this to the moving target counts as on track */
    float track_success_frac;         /* success: on track for at least this fraction of the episode */
    /* formation and obstacles */
    float formation_spacing_m;
    float obstacle_count;             /* spheres in an obstacles world */
    float obstacle_radius_m_range[2];
    float obstacle_goal_dist_m_range[2];
    float obstacle_spread_m;          /* spheres scatter this far (1 sigma; vertically 0.43 of it) off the way to the goal */
} SlTaskConfig;

#define SL_F(T, name, n, lo, hi, doc) {#name, (int)offsetof(T, name), n, lo, hi, doc}
static const SlField SL_TASK_FIELDS[] = {
    SL_F(SlTaskConfig, physics_dt_s, 1, 1e-4f, 0.02f, "RK4 step"),
    SL_F(SlTaskConfig, control_hz, 1, 1.f, 2000.f, "agent steps per second"),
    SL_F(SlTaskConfig, bounds_m, 3, 0.1f, 1e4f, "half-extent x, y and height of the box"),
    SL_F(SlTaskConfig, target_dist_m_range, 2, 0.f, 1e4f, ""),
    SL_F(SlTaskConfig, success_radius_m, 1, 1e-3f, 100.f, ""),
    SL_F(SlTaskConfig, success_speed_m_s, 1, 1e-3f, 100.f, ""),
    SL_F(SlTaskConfig, hold_s, 1, 0.f, 1e3f, ""),
    SL_F(SlTaskConfig, episode_s, 1, 0.01f, 1e5f, ""),
    SL_F(SlTaskConfig, ground_start_prob, 1, 0.f, 1.f, ""),
    SL_F(SlTaskConfig, init_tilt_max_rad, 1, 0.f, 3.15f, ""),
    SL_F(SlTaskConfig, init_speed_max_m_s, 1, 0.f, 100.f, ""),
    SL_F(SlTaskConfig, init_rate_max_rad_s, 1, 0.f, 100.f, ""),
    SL_F(SlTaskConfig, reward_alive_per_s, 1, 0.f, 1e4f, ""),
    SL_F(SlTaskConfig, reward_progress_per_m, 1, 0.f, 1e4f, ""),
    SL_F(SlTaskConfig, reward_dist_per_m_s, 1, 0.f, 1e4f, ""),
    SL_F(SlTaskConfig, reward_hold_per_s, 1, 0.f, 1e4f, ""),
    SL_F(SlTaskConfig, reward_rate_per_rad2_s, 1, 0.f, 1e4f, ""),
    SL_F(SlTaskConfig, reward_action_change_per_s, 1, 0.f, 1e4f, ""),
    SL_F(SlTaskConfig, reward_crash, 1, 0.f, 1e6f, ""),
    SL_F(SlTaskConfig, end_on_success, 1, 0.f, 1.f, ""),
    SL_F(SlTaskConfig, task_prob, SL_N_TASKS, 0.f, 1e6f, "relative frequency of each task"),
    SL_F(SlTaskConfig, drones_per_space, 1, 1.f, 65536.f, "drones sharing one space (1: separate worlds)"),
    SL_F(SlTaskConfig, sense_range_m, 1, 0.f, 100.f, "obstacles nearer than this are observed"),
    SL_F(SlTaskConfig, race_laps, 1, 1.f, 100.f, ""),
    SL_F(SlTaskConfig, race_time_per_gate_s, 1, 0.1f, 1e3f, ""),
    SL_F(SlTaskConfig, gate_count_range, 2, 1.f, (float)SL_MAX_GATES, ""),
    SL_F(SlTaskConfig, gate_spacing_m_range, 2, 0.5f, 1e3f, ""),
    SL_F(SlTaskConfig, gate_turn_max_rad, 1, 0.f, 1.6f, ""),
    SL_F(SlTaskConfig, gate_split_s_prob, 1, 0.f, 1.f, "random courses: chance of each gate being a split-S"),
    SL_F(SlTaskConfig, gate_size_m, 1, 0.1f, 100.f, ""),
    SL_F(SlTaskConfig, gate_frame_m, 1, 0.f, 10.f, ""),
    SL_F(SlTaskConfig, reward_gate, 1, 0.f, 1e4f, ""),
    SL_F(SlTaskConfig, reward_race_time_per_s, 1, 0.f, 1e4f, "race only: penalty per second (H18)"),
    SL_F(SlTaskConfig, reward_gate_progress_per_m, 1, 0.f, 1e4f, "race only: reward per metre along the gate-to-gate line (H18)"),
    SL_F(SlTaskConfig, reward_clearance_per_s, 1, 0.f, 1e4f, "penalty per second near gate frames and obstacles (H18)"),
    SL_F(SlTaskConfig, clearance_m, 1, 1e-3f, 100.f, "clearance penalty range, surface to surface (H18)"),
    SL_F(SlTaskConfig, orbit_radius_m_range, 2, 0.1f, 1e3f, ""),
    SL_F(SlTaskConfig, orbit_speed_m_s_range, 2, 0.f, 100.f, ""),
    SL_F(SlTaskConfig, follow_speed_m_s_max, 1, 0.f, 100.f, ""),
    SL_F(SlTaskConfig, track_radius_m, 1, 1e-3f, 100.f, ""),
    SL_F(SlTaskConfig, track_success_frac, 1, 0.f, 1.f, ""),
    SL_F(SlTaskConfig, formation_spacing_m, 1, 0.05f, 100.f, ""),
    SL_F(SlTaskConfig, obstacle_count, 1, 0.f, (float)SL_MAX_OBSTACLES, ""),
    SL_F(SlTaskConfig, obstacle_radius_m_range, 2, 0.01f, 100.f, ""),
    SL_F(SlTaskConfig, obstacle_goal_dist_m_range, 2, 0.f, 1e4f, ""),
    SL_F(SlTaskConfig, obstacle_spread_m, 1, 0.f, 100.f, "spheres scatter this far sideways of the way to the goal"),
};
#undef SL_F
#define SL_N_TASK_FIELDS ((int)(sizeof SL_TASK_FIELDS / sizeof SL_TASK_FIELDS[0]))

/* The defaults of every field (sim.env.DEFAULT_TASK reads them): a 10 x 10 x 5 m box, hover / go-to
 * only, every drone in a world of its own. */
static const SlTaskConfig SL_TASK_DEFAULTS = {
    .physics_dt_s = 0.002f,
    .control_hz = 100.f,
    .bounds_m = {5.f, 5.f, 5.f},
    .target_dist_m_range = {0.5f, 3.f},
    .success_radius_m = 0.1f,
    .success_speed_m_s = 0.3f,
    .hold_s = 0.5f,
    .episode_s = 6.f,
    .ground_start_prob = 0.1f,
    .init_tilt_max_rad = 0.5f,
    .init_speed_max_m_s = 1.f,
    .init_rate_max_rad_s = 2.f,
    .reward_alive_per_s = 1.f,
    .reward_progress_per_m = 5.f,
    .reward_dist_per_m_s = 0.5f,
    .reward_hold_per_s = 2.f,
    .reward_rate_per_rad2_s = 0.02f,
    .reward_action_change_per_s = 0.5f,
    .reward_crash = 10.f,
    .end_on_success = 0.f,
    .task_prob = {1.f, 0.f, 0.f, 0.f, 0.f, 0.f},
    .drones_per_space = 1.f,
    .sense_range_m = 3.f,
    .race_laps = 1.f,
    .race_time_per_gate_s = 4.f,
    .gate_count_range = {3.f, 6.f},
    .gate_spacing_m_range = {3.f, 6.f},
    .gate_turn_max_rad = 0.3f,
    .gate_split_s_prob = 0.f,
    .gate_size_m = 0.8f,
    .gate_frame_m = 0.15f,
    .reward_gate = 5.f,
    .clearance_m = 0.3f,
    .orbit_radius_m_range = {0.5f, 2.5f},
    .orbit_speed_m_s_range = {0.3f, 1.5f},
    .follow_speed_m_s_max = 1.5f,
    .track_radius_m = 0.3f,
    .track_success_frac = 0.7f,
    .formation_spacing_m = 1.5f,
    .obstacle_count = 6.f,
    .obstacle_radius_m_range = {0.15f, 0.5f},
    .obstacle_goal_dist_m_range = {2.5f, 5.f},
    .obstacle_spread_m = 0.7f,
};

/* ============================================================================================
 * 2. Observation layout. The one definition; the sim, trainer, exporter and flight runner
 *    all read it from here. Bump SL_OBS_LAYOUT_VERSION when it changes.
 * ========================================================================================== */
#define SL_OBS_LAYOUT_VERSION 2
#define SL_OBS_GATE_SIZE 9     /* per gate: centre offset body (squashed, 3), normal body (3), half width, half height (m), present */
#define SL_OBS_OBSTACLE_SIZE 5 /* per obstacle: centre offset body (m, 3), radius (m), present */
#define SL_OBS_FIELDS(X)                                                                         \
    X(target_body, 3)       /* target - position, body FLU, squashed: d / (1 + |d|) (metres) */ \
    X(vel_body_m_s, 3)      /* velocity in body FLU */                                          \
    X(rot_body_to_world, 9) /* rotation matrix, row-major: attitude without a double cover */  \
    X(omega_body_rad_s, 3)  /* body rates FLU (gyro) */                                         \
    X(last_actions, SL_ACTION_HISTORY * SL_ACTION_SIZE) /* newest first */                      \
    X(hover_action, 1)      /* the action that hovers the nominal drone (from its profile) */   \
    X(target_vel_body_m_s, 3) /* the target's velocity, body FLU (orbit, follow; else 0) */     \
    X(gates, SL_OBS_GATES * SL_OBS_GATE_SIZE) /* the next K gates (race; else 0) */            \
    X(obstacles, SL_OBS_OBSTACLES * SL_OBS_OBSTACLE_SIZE) /* the nearest M, nearest first */

#define SL_OBS_ENUM_OFFSET(name, n) SL_OBS_##name, SL_OBS_##name##_END = SL_OBS_##name + (n)-1,
enum { SL_OBS_FIELDS(SL_OBS_ENUM_OFFSET) SL_OBS_SIZE };
#undef SL_OBS_ENUM_OFFSET
#define SL_OBS_NAME_ROW(name, n) {#name, SL_OBS_##name, n},
typedef struct {
    const char *name;
    int offset, count;
} SlObsField;
static const SlObsField SL_OBS_TABLE[] = {SL_OBS_FIELDS(SL_OBS_NAME_ROW)};
#undef SL_OBS_NAME_ROW
#define SL_N_OBS_FIELDS ((int)(sizeof SL_OBS_TABLE / sizeof SL_OBS_TABLE[0]))

/* ============================================================================================
 * 3. The environment: N drones, structure of arrays. All per-drone numbers live in one float
 *    block: a field of width W occupies W rows of n_pad floats, so component c of drone i of
 *    field NAME is F[(SL_ROW_NAME + c) * n_pad + i]. SL_DRONE_FLOATS lists every field once;
 *    the row numbers, the Python views and the memory figure all come from this list.
 * ========================================================================================== */
#define SL_DRONE_FLOATS(X)                                                                       \
    /* state */                                                                                  \
    X(pos_enu_m, 3) X(vel_enu_m_s, 3) X(quat_wxyz, 4) X(omega_flu_rad_s, 3) X(rotor_rad_s, 4)  \
    X(rate_integral, 3) X(rate_prev, 3) X(crashed, 1)                                            \
    /* the randomized (true) drone */                                                            \
    X(mass_kg, 1) X(arm_m, 1) X(inertia_kg_m2, 3) X(kf_n_per_rad2s2, 1) X(km_nm_per_rad2s2, 1)  \
    X(motor_tau_up_s, 1) X(motor_tau_down_s, 1) X(motor_delay_s, 1) X(drag_n_per_m_s, 3)        \
    X(rotor_inertia_kg_m2, 1) X(omega_max_rad_s, 1) X(omega_scale, 1) X(battery_v, 1)          \
    X(latency_s, 1) X(force_n, 3) X(torque_nm, 3) X(crash_speed_m_s, 1)                          \
    X(delay_steps, 1) X(latency_steps, 1) /* whole numbers of physics steps */                  \
    /* the nominal drone the controller and throttle map know (size family, no noise) */        \
    X(nom_curve, 3) X(nom_omega_min, 1) X(nom_omega_max, 1) X(nom_kf, 1) X(nom_km, 1)           \
    X(nom_inertia, 3) X(nom_thrust_max, 1) X(hover_action, 1)                                    \
    /* actions: current (transposed from the action buffer) and previous (for latency) */       \
    X(action_now, 4) X(action_prev, 4) X(action_hist, SL_ACTION_HISTORY * SL_ACTION_SIZE)       \
    /* task: the target is c + A sin(W t + phase) (A = 0: a fixed point) */                      \
    X(task_id, 1) X(goal, 1) X(radius_m, 1) X(target_enu_m, 3) X(target_vel_enu_m_s, 3)         \
    X(move_centre_enu_m, 3) X(move_amp_m, 3) X(move_w_rad_s, 3) X(move_phase_rad, 3)            \
    X(prev_pos_enu_m, 3) X(next_gate, 1) X(gates_passed, 1) X(gates_to_pass, 1) X(episode_s, 1) \
    X(prev_dist_m, 1) X(time_s, 1) X(hold_s, 1) X(track_s, 1) X(time_to_target_s, 1)            \
    X(ep_return, 1) X(ep_success, 1) X(collided, 1) X(gate_event, 1)                             \
    /* what the drone senses: the nearest obstacles (centre ENU, radius), nearest first */       \
    X(near, SL_OBS_OBSTACLES * 4) X(near_count, 1)                                               \
    /* the next gates of a race, copied from its course (so observing needs no gather) */       \
    X(next_gates, SL_OBS_GATES * SL_GATE_FLOATS) X(next_gates_count, 1)                         \
    /* record of each drone's last finished episode (valid where done) */                       \
    X(last_return, 1) X(last_length_s, 1) X(last_success, 1) X(last_crash, 1)                   \
    X(last_time_to_target_s, 1) X(last_final_error_m, 1) X(last_arm_m, 1) X(last_mass_kg, 1)   \
    X(last_task, 1) X(last_gates, 1) X(last_collision, 1) X(last_crash_cause, 1)

#define SL_ROW_ENUM(name, w) SL_ROW_##name, SL_ROW_##name##_END = SL_ROW_##name + (w)-1,
enum { SL_DRONE_FLOATS(SL_ROW_ENUM) SL_N_ROWS };
#undef SL_ROW_ENUM

/* Component c of field `name` of drone i; needs F (the block), np (n_pad) and i in scope. */
#define SL_D(name, c) F[(ptrdiff_t)(SL_ROW_##name + (c)) * np + i] /* 64-bit index: affine, so no gathers */

typedef struct {
    int n, n_pad, action_mode, substeps;
    float dt_s, control_dt_s;
    int reference;  /* 1: step physics with the scalar reference (sl_physics_reference), for tests */
    int prefetch_obs; /* 1: the observations and rows outgrow the core's L2, so physics fetches a block's observation lines ahead */
    size_t bytes;   /* memory allocated for this environment, in all */
    uint64_t substeps_integrated; /* RK4 steps of real drones done so far (counted by the kernels) */
    uint32_t head; /* motor-command ring buffer: slot written by the next physics step */
    uint32_t delay_mask; /* ring slots - 1 (a power of two, sized for the longest delay) */
    SlParams nominal;
    SlRandomization rnd;
    SlTaskConfig task;
    /* buffers shared with Python (NumPy views, no copies) */
    float *obs;         /* [n][SL_OBS_SIZE] */
    float *actions;     /* [n][4] */
    float *rewards;     /* [n] */
    uint8_t *terminals; /* [n] */
    uint8_t *truncations;
    float *final_obs;   /* [n][SL_OBS_SIZE]: last observation of a finished episode (valid where done) */
    float *f;           /* [SL_N_ROWS][n_pad]: every per-drone field */
    uint32_t *rng;      /* [n_pad] one random stream per drone */
    float *ring;        /* [blocks][delay_mask + 1][4][SL_BLOCK] rotor-speed commands (SL_RING_INDEX) */
    float *block;       /* [SL_N_ROWS][SL_BLOCK] working copy of one block's rows (observations) */
    /* the shared spaces: drones i * space_size .. (i + 1) * space_size - 1 fly in space i */
    int space_size, n_spaces;
    float *gates;       /* [n_spaces][SL_MAX_GATES][SL_GATE_FLOATS] world ENU */
    int *n_gates;       /* [n_spaces] */
    float *obstacles;   /* [n_spaces][SL_MAX_OBSTACLES][4]: centre ENU, radius */
    int *n_obstacles;   /* [n_spaces] */
    float *formation;   /* [n_spaces][space_size][3]: each drone's slot, ENU */
    uint32_t *space_rng;/* [n_spaces] one random stream per space (its course, obstacles, formation) */
    int course_n;       /* > 0: a course was set; its gates replace random ones */
    float course[SL_MAX_GATES * SL_GATE_FLOATS];
    float task_cdf[SL_N_TASKS];
} SlEnv;

/* The motor-command ring: each block of SL_BLOCK drones (drone i is in block i / SL_BLOCK) has its own
 * [slots][4][SL_BLOCK] floats, so the slots a control step reads lie side by side in memory. */
#define SL_RING_INDEX(e, slot, m, i) \
    ((((size_t)((i) / SL_BLOCK) * ((e)->delay_mask + 1) + (size_t)(slot)) * 4 + (size_t)(m)) * SL_BLOCK + (size_t)((i) % SL_BLOCK))

/* One vector of the build's width (the delay ring's selects, the observation's transposition). */
typedef float SlVec __attribute__((vector_size(SL_VECTOR_BYTES), may_alias));
typedef float SlVecU __attribute__((vector_size(SL_VECTOR_BYTES), aligned(4), may_alias)); /* unaligned */
typedef int32_t SlVecI __attribute__((vector_size(SL_VECTOR_BYTES)));

/* Each per-drone field's name, width and first row, for Python's views. */
typedef struct {
    const char *name;
    int width, row;
} SlDroneField;
#define SL_DRONE_ROW(name, w) {#name, w, SL_ROW_##name},
static const SlDroneField SL_DRONE_TABLE[] = {SL_DRONE_FLOATS(SL_DRONE_ROW)};
#undef SL_DRONE_ROW
#define SL_N_DRONE_FIELDS ((int)(sizeof SL_DRONE_TABLE / sizeof SL_DRONE_TABLE[0]))

/* One drone's dynamics constants and nominal model, from the block. */
SL_INLINE void sl_load_body(const float *restrict F, int np, int i, SlBody *b, SlNominal *nm) {
    b->inv_mass = 1.f / SL_D(mass_kg, 0);
    for (int a = 0; a < 3; a++) {
        b->J[a] = SL_D(inertia_kg_m2, a);
        b->inv_J[a] = 1.f / b->J[a];
        b->drag[a] = SL_D(drag_n_per_m_s, a);
        b->force[a] = SL_D(force_n, a);
        b->torque[a] = SL_D(torque_nm, a);
        nm->curve[a] = SL_D(nom_curve, a);
        nm->J[a] = SL_D(nom_inertia, a);
    }
    b->kf = SL_D(kf_n_per_rad2s2, 0);
    b->km = SL_D(km_nm_per_rad2s2, 0);
    b->l = SL_D(arm_m, 0) * 0.70710678f;
    b->inv_tau_up = 1.f / SL_D(motor_tau_up_s, 0);
    b->inv_tau_down = 1.f / SL_D(motor_tau_down_s, 0);
    b->rotor_J = SL_D(rotor_inertia_kg_m2, 0);
    nm->omega_min = SL_D(nom_omega_min, 0);
    nm->omega_max = SL_D(nom_omega_max, 0);
    nm->kf = SL_D(nom_kf, 0);
    nm->inv_kf = 1.f / nm->kf;
    nm->k_yaw = SL_D(nom_km, 0) / nm->kf;
    nm->l = b->l;
    nm->thrust_max = SL_D(nom_thrust_max, 0);
}

SL_INLINE void sl_load_state(const float *restrict F, int np, int i, SlState *s) {
    for (int a = 0; a < 3; a++) { s->p[a] = SL_D(pos_enu_m, a); s->v[a] = SL_D(vel_enu_m_s, a); s->w[a] = SL_D(omega_flu_rad_s, a); }
    for (int a = 0; a < 4; a++) { s->q[a] = SL_D(quat_wxyz, a); s->r[a] = SL_D(rotor_rad_s, a); }
}

SL_INLINE void sl_store_state(float *restrict F, int np, int i, const SlState *s) {
    for (int a = 0; a < 3; a++) { SL_D(pos_enu_m, a) = s->p[a]; SL_D(vel_enu_m_s, a) = s->v[a]; SL_D(omega_flu_rad_s, a) = s->w[a]; }
    for (int a = 0; a < 4; a++) { SL_D(quat_wxyz, a) = s->q[a]; SL_D(rotor_rad_s, a) = s->r[a]; }
}

/* One control step of physics, the scalar reference: drone by drone, straight from the block F.
 * The vector kernel below must give the same numbers bit for bit (a test compares them). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-vectorize", "no-tree-slp-vectorize")))
#endif
static void sl_physics_reference(SlEnv *e, const int i0, const int i1) {
    float *F = e->f, *ring = e->ring;
    const int np = e->n_pad, S = e->substeps, MODE = e->action_mode;
    const float dt = e->dt_s, v_nominal = e->nominal.battery_v_nominal;
    const SlParams p = e->nominal;
    e->substeps_integrated += (uint64_t)(i1 - i0) * (uint64_t)S;
    for (int i = i0; i < i1; i++) {
        for (int m = 0; m < 4; m++) SL_D(action_now, m) = e->actions[i * 4 + m];
        for (int a = 0; a < 3; a++) SL_D(prev_pos_enu_m, a) = SL_D(pos_enu_m, a); /* for gate crossings */
        SlBody b;
        SlNominal nm;
        SlState s;
        sl_load_body(F, np, i, &b, &nm);
        sl_load_state(F, np, i, &s);
        const float cap = SL_D(omega_max_rad_s, 0) * SL_D(battery_v, 0) / v_nominal;
        for (int k = 0; k < S; k++) {
            const int w_slot = (int)((e->head + (uint32_t)k) & e->delay_mask);
            float a[4], cmd[4], target[4], integ[3], w_prev[3];
            float is_new = (float)k >= SL_D(latency_steps, 0) ? 1.f : 0.f;
            for (int m = 0; m < 4; m++) a[m] = SL_D(action_prev, m) + is_new * (SL_D(action_now, m) - SL_D(action_prev, m));
            for (int c = 0; c < 3; c++) { integ[c] = SL_D(rate_integral, c); w_prev[c] = SL_D(rate_prev, c); }
            if (MODE == SL_ACTION_MOTOR) sl_motor_command(a, &nm, cmd);
            else sl_ctbr_command(a, &nm, &p, s.w, w_prev, integ, dt, cmd);
            const int r_slot = (w_slot - (int)SL_D(delay_steps, 0)) & (int)e->delay_mask;
            for (int m = 0; m < 4; m++) ring[SL_RING_INDEX(e, w_slot, m, i)] = cmd[m];
            for (int m = 0; m < 4; m++) target[m] = sl_clamp(ring[SL_RING_INDEX(e, r_slot, m, i)] * SL_D(omega_scale, 0), 0.f, cap);
            sl_rk4(&s, &b, target, dt);
            float crashed = SL_D(crashed, 0);
            float airborne = 1.f - sl_ground(&s, SL_D(crash_speed_m_s, 0), &crashed);
            SL_D(crashed, 0) = crashed;
            for (int c = 0; c < 3; c++) { SL_D(rate_integral, c) = airborne * integ[c]; SL_D(rate_prev, c) = w_prev[c]; }
        }
        sl_store_state(F, np, i, &s);
        for (int m = 0; m < 4; m++) SL_D(action_prev, m) = SL_D(action_now, m);
    }
}

/* The vector kernel's working set: SL_BLOCK drones, every quantity the substeps touch, as rows
 * of SL_BLOCK floats at fixed offsets from one base (no row pointers to keep in registers, no
 * strides that alias), the constants of the step computed once (no division per substep). */
typedef struct {
    float p[3][SL_BLOCK], v[3][SL_BLOCK], q[4][SL_BLOCK], w[3][SL_BLOCK], r[4][SL_BLOCK];
    float integ[3][SL_BLOCK], w_prev[3][SL_BLOCK], crashed[SL_BLOCK];
    float inv_mass[SL_BLOCK], J[3][SL_BLOCK], inv_J[3][SL_BLOCK], kf[SL_BLOCK], km[SL_BLOCK], l[SL_BLOCK];
    float inv_tau_up[SL_BLOCK], inv_tau_down[SL_BLOCK], drag[3][SL_BLOCK], rotor_J[SL_BLOCK];
    float force[3][SL_BLOCK], torque[3][SL_BLOCK];
    float curve[3][SL_BLOCK], omega_min[SL_BLOCK], omega_max[SL_BLOCK], nkf[SL_BLOCK], inv_kf[SL_BLOCK];
    float k_yaw[SL_BLOCK], nJ[3][SL_BLOCK], thrust_max[SL_BLOCK];
    float cap[SL_BLOCK], omega_scale[SL_BLOCK], crash_speed[SL_BLOCK], latency[SL_BLOCK];
    float a_prev[4][SL_BLOCK], a_now[4][SL_BLOCK], delay[SL_BLOCK];
} SlBlockState;

/* n floats, inline (vector moves; a call to memcpy per row would cost more than the copy) */
SL_INLINE void sl_copy(float *restrict dst, const float *restrict src, const int n) {
    for (int j = 0; j < n; j++) dst[j] = src[j];
}

/* Copies drones i0 .. i0 + nb - 1 into the working set (rows of F are contiguous here). */
SL_INLINE void sl_block_load(SlEnv *e, SlBlockState *restrict B, const int i0, const int nb) {
    const float *restrict F = e->f;
    const float *restrict actions = e->actions;
    const int np = e->n_pad;
    const float v_nominal = e->nominal.battery_v_nominal;
#define SL_ROW(name, c) (F + (ptrdiff_t)(SL_ROW_##name + (c)) * np + i0)
    for (int a = 0; a < 3; a++) {
        sl_copy(B->p[a], SL_ROW(pos_enu_m, a), nb);
        sl_copy(B->v[a], SL_ROW(vel_enu_m_s, a), nb);
        sl_copy(B->w[a], SL_ROW(omega_flu_rad_s, a), nb);
        sl_copy(B->integ[a], SL_ROW(rate_integral, a), nb);
        sl_copy(B->w_prev[a], SL_ROW(rate_prev, a), nb);
        sl_copy(B->force[a], SL_ROW(force_n, a), nb);
        sl_copy(B->torque[a], SL_ROW(torque_nm, a), nb);
        sl_copy(B->drag[a], SL_ROW(drag_n_per_m_s, a), nb);
        sl_copy(B->J[a], SL_ROW(inertia_kg_m2, a), nb);
        sl_copy(B->curve[a], SL_ROW(nom_curve, a), nb);
        sl_copy(B->nJ[a], SL_ROW(nom_inertia, a), nb);
    }
    for (int a = 0; a < 4; a++) {
        sl_copy(B->q[a], SL_ROW(quat_wxyz, a), nb);
        sl_copy(B->r[a], SL_ROW(rotor_rad_s, a), nb);
        sl_copy(B->a_prev[a], SL_ROW(action_prev, a), nb);
    }
    for (int j = 0; j < nb; j++)
        for (int m = 0; m < 4; m++) B->a_now[m][j] = actions[(ptrdiff_t)(i0 + j) * 4 + m];
    sl_copy(B->crashed, SL_ROW(crashed, 0), nb);
    sl_copy(B->kf, SL_ROW(kf_n_per_rad2s2, 0), nb);
    sl_copy(B->km, SL_ROW(km_nm_per_rad2s2, 0), nb);
    sl_copy(B->rotor_J, SL_ROW(rotor_inertia_kg_m2, 0), nb);
    sl_copy(B->omega_min, SL_ROW(nom_omega_min, 0), nb);
    sl_copy(B->omega_max, SL_ROW(nom_omega_max, 0), nb);
    sl_copy(B->nkf, SL_ROW(nom_kf, 0), nb);
    sl_copy(B->thrust_max, SL_ROW(nom_thrust_max, 0), nb);
    sl_copy(B->omega_scale, SL_ROW(omega_scale, 0), nb);
    sl_copy(B->crash_speed, SL_ROW(crash_speed_m_s, 0), nb);
    sl_copy(B->latency, SL_ROW(latency_steps, 0), nb);
    sl_copy(B->delay, SL_ROW(delay_steps, 0), nb);
    /* the constants of the step: the same expressions as sl_load_body, once instead of per substep */
    const float *restrict mass = SL_ROW(mass_kg, 0), *restrict arm = SL_ROW(arm_m, 0), *restrict km = SL_ROW(nom_km, 0);
    const float *restrict tau_up = SL_ROW(motor_tau_up_s, 0), *restrict tau_down = SL_ROW(motor_tau_down_s, 0);
    const float *restrict om = SL_ROW(omega_max_rad_s, 0), *restrict bv = SL_ROW(battery_v, 0);
    for (int j = 0; j < nb; j++) {
        B->inv_mass[j] = 1.f / mass[j];
        B->l[j] = arm[j] * 0.70710678f;
        B->inv_tau_up[j] = 1.f / tau_up[j];
        B->inv_tau_down[j] = 1.f / tau_down[j];
        B->inv_kf[j] = 1.f / B->nkf[j];
        B->k_yaw[j] = km[j] / B->nkf[j];
        B->cap[j] = om[j] * bv[j] / v_nominal;
        for (int a = 0; a < 3; a++) B->inv_J[a][j] = 1.f / B->J[a][j];
    }
#undef SL_ROW
}

/* Writes the state back, the new action becoming the previous one. */
SL_INLINE void sl_block_store(SlEnv *e, const SlBlockState *restrict B, const int i0, const int nb) {
    float *restrict F = e->f;
    const int np = e->n_pad;
#define SL_ROW(name, c) (F + (ptrdiff_t)(SL_ROW_##name + (c)) * np + i0)
    for (int a = 0; a < 3; a++) {
        sl_copy(SL_ROW(prev_pos_enu_m, a), SL_ROW(pos_enu_m, a), nb); /* for gate crossings */
        sl_copy(SL_ROW(pos_enu_m, a), B->p[a], nb);
        sl_copy(SL_ROW(vel_enu_m_s, a), B->v[a], nb);
        sl_copy(SL_ROW(omega_flu_rad_s, a), B->w[a], nb);
        sl_copy(SL_ROW(rate_integral, a), B->integ[a], nb);
        sl_copy(SL_ROW(rate_prev, a), B->w_prev[a], nb);
    }
    for (int a = 0; a < 4; a++) {
        sl_copy(SL_ROW(quat_wxyz, a), B->q[a], nb);
        sl_copy(SL_ROW(rotor_rad_s, a), B->r[a], nb);
        sl_copy(SL_ROW(action_prev, a), B->a_now[a], nb);
        sl_copy(SL_ROW(action_now, a), B->a_now[a], nb);
    }
    sl_copy(SL_ROW(crashed, 0), B->crashed, nb);
#undef SL_ROW
}

/* One control step of physics for drones i0..i1-1 (a block small enough to stay in cache through
 * all the substeps): `substeps` RK4 steps, the action taking effect after each drone's latency,
 * commands passing through the delay ring, ground contact. The inner loop runs over the drones
 * of the block and vectorizes at the build's width; MODE is a compile-time constant at each call,
 * so each action mode gets its own loop. The delay ring is read without gathers: for each delay
 * the block's drones have (a few), one contiguous load and a select, in registers. The caller
 * advances the ring's head once all blocks are done. i0 is a multiple of SL_BLOCK.
 * observe_next = 1: the block's observations are written right after (own worlds, replay) and
 * e->obs has left the core's L2 since the last step (8192 drones: 2.2 MB, beside 5.3 MB of rows);
 * the block's lines of e->obs are fetched for writing meanwhile, a share each substep, so those
 * stores do not wait for memory. (Where all fits in L2, the fetches only cost: e->prefetch_obs.) */
SL_INLINE void sl_physics(SlEnv *e, const int MODE, const int i0, const int i1, const int observe_next) {
    SlBlockState B __attribute__((aligned(64)));
    const int nb = (i1 - i0 + SL_LANES - 1) / SL_LANES * SL_LANES; /* whole vectors; padding lanes are resting drones */
    float *restrict ring = e->ring + SL_RING_INDEX(e, 0, 0, i0); /* this block's [slots][4][SL_BLOCK] */
    const int S = e->substeps;
    const float dt = e->dt_s;
    const SlParams p = e->nominal;
    const uint32_t head = e->head;
    sl_block_load(e, &B, i0, nb);
    e->substeps_integrated += (uint64_t)(i1 - i0) * (uint64_t)S;
    const int mask = (int)e->delay_mask;
    int d_lo = mask + 1, d_hi = 0;
    for (int j = 0; j < nb; j++) {
        const int d = (int)B.delay[j];
        d_lo = d < d_lo ? d : d_lo;
        d_hi = d > d_hi ? d : d_hi;
    }
    const int gather = d_hi - d_lo >= SL_DELAY_SELECT_MAX;
    const char *obs_lines = (const char *)(e->obs + (size_t)i0 * SL_OBS_SIZE);
    const int n_obs_lines = observe_next ? (nb * SL_OBS_SIZE * (int)sizeof(float) + 63) / 64 : 0;
    for (int k = 0; k < S; k++) {
        const int w_slot = (int)((head + (uint32_t)k) & e->delay_mask);
        float *restrict ring_w = ring + (ptrdiff_t)w_slot * 4 * SL_BLOCK;
        for (int l = k * n_obs_lines / S; l < (k + 1) * n_obs_lines / S; l++) __builtin_prefetch(obs_lines + (size_t)l * 64, 1, 1);
#pragma GCC ivdep
        for (int j = 0; j < nb; j++) {
            SlNominal nm;
            float a[4], cmd[4], integ[3], w_prev[3], w[3] = {B.w[0][j], B.w[1][j], B.w[2][j]};
            float is_new = (float)k >= B.latency[j] ? 1.f : 0.f;
            for (int m = 0; m < 4; m++) a[m] = B.a_prev[m][j] + is_new * (B.a_now[m][j] - B.a_prev[m][j]);
            for (int c = 0; c < 3; c++) { integ[c] = B.integ[c][j]; w_prev[c] = B.w_prev[c][j]; nm.curve[c] = B.curve[c][j]; nm.J[c] = B.nJ[c][j]; }
            nm.omega_min = B.omega_min[j]; nm.omega_max = B.omega_max[j]; nm.kf = B.nkf[j]; nm.inv_kf = B.inv_kf[j];
            nm.k_yaw = B.k_yaw[j]; nm.l = B.l[j]; nm.thrust_max = B.thrust_max[j];
            if (MODE == SL_ACTION_MOTOR) sl_motor_command(a, &nm, cmd);
            else sl_ctbr_command(a, &nm, &p, w, w_prev, integ, dt, cmd);
            for (int c = 0; c < 3; c++) { B.integ[c][j] = integ[c]; B.w_prev[c][j] = w_prev[c]; }
            for (int m = 0; m < 4; m++) ring_w[m * SL_BLOCK + j] = cmd[m];
        }
        /* pure delay: each drone reads the command of delay_steps ago (in its own lane): for the
         * few delays a block has, a vector of each motor's commands, one load and a select per
         * delay held in registers; for a wide spread of delays (long randomized ones), a gather */
        float past[4][SL_BLOCK] __attribute__((aligned(64)));
        if (gather)
            for (int m = 0; m < 4; m++)
#pragma GCC ivdep
                for (int j = 0; j < nb; j++)
                    past[m][j] = ring[(((w_slot - (int)B.delay[j]) & mask) * 4 + m) * SL_BLOCK + j];
        for (int j = 0; j < nb && !gather; j += SL_LANES) {
            const SlVec delay = *(const SlVec *)(B.delay + j);
            const float *slot = ring + ((w_slot - d_lo) & mask) * 4 * SL_BLOCK + j;
            SlVec acc[4];
            for (int m = 0; m < 4; m++) acc[m] = *(const SlVec *)(slot + m * SL_BLOCK);
            for (int d = d_lo + 1; d <= d_hi; d++) {
                const SlVecI take = delay == (SlVec){0} + (float)d;
                slot = ring + ((w_slot - d) & mask) * 4 * SL_BLOCK + j;
                for (int m = 0; m < 4; m++)
                    acc[m] = (SlVec)(((SlVecI) * (const SlVec *)(slot + m * SL_BLOCK) & take) | ((SlVecI)acc[m] & ~take));
            }
            for (int m = 0; m < 4; m++) *(SlVec *)(past[m] + j) = acc[m];
        }
#pragma GCC ivdep
        for (int j = 0; j < nb; j++) {
            SlBody b;
            SlState s;
            float target[4];
            for (int c = 0; c < 3; c++) {
                s.p[c] = B.p[c][j]; s.v[c] = B.v[c][j]; s.w[c] = B.w[c][j];
                b.J[c] = B.J[c][j]; b.inv_J[c] = B.inv_J[c][j]; b.drag[c] = B.drag[c][j]; b.force[c] = B.force[c][j]; b.torque[c] = B.torque[c][j];
            }
            for (int m = 0; m < 4; m++) { s.q[m] = B.q[m][j]; s.r[m] = B.r[m][j]; }
            b.inv_mass = B.inv_mass[j]; b.kf = B.kf[j]; b.km = B.km[j]; b.l = B.l[j];
            b.inv_tau_up = B.inv_tau_up[j]; b.inv_tau_down = B.inv_tau_down[j]; b.rotor_J = B.rotor_J[j];
            for (int m = 0; m < 4; m++) target[m] = sl_clamp(past[m][j] * B.omega_scale[j], 0.f, B.cap[j]);
            sl_rk4(&s, &b, target, dt);
            float crashed = B.crashed[j];
            float airborne = 1.f - sl_ground(&s, B.crash_speed[j], &crashed);
            B.crashed[j] = crashed;
            for (int c = 0; c < 3; c++) { B.p[c][j] = s.p[c]; B.v[c][j] = s.v[c]; B.w[c][j] = s.w[c]; }
            for (int m = 0; m < 4; m++) { B.q[m][j] = s.q[m]; B.r[m][j] = s.r[m]; }
            /* on the ground the rate loop's integral is held at zero, as flight controllers do */
            for (int c = 0; c < 3; c++) B.integ[c][j] = airborne * B.integ[c][j];
        }
    }
    sl_block_store(e, &B, i0, nb);
}

/* ============================================================================================
 * 4. Observation. sl_observe builds one drone's observation from what a real vehicle has; the
 *    flight runner calls this same function (through sl_observe_state) with its telemetry.
 * ========================================================================================== */
typedef struct {
    float pos_enu_m[3], vel_enu_m_s[3], quat_wxyz[4], omega_flu_rad_s[3], target_enu_m[3];
    float last_actions[SL_ACTION_HISTORY * SL_ACTION_SIZE]; /* newest first */
    float hover_action;
    float target_vel_enu_m_s[3];
    float gates[SL_OBS_GATES][SL_GATE_FLOATS]; /* the next gates, world ENU */
    float n_gates;                             /* how many of them are present (0..K) */
    float near[SL_OBS_OBSTACLES][4];           /* the nearest obstacles: centre ENU, radius */
    float n_near;
} SlObsInput;

/* world -> body FLU is R^T: column a of R */
SL_INLINE float sl_to_body(const float R[9], const float v[3], int a) { return SL_FMA(R[6 + a], v[2], SL_FMA(R[3 + a], v[1], R[a] * v[0])); }

/* Writes component k of the observation at out[k * st] (st = 1: one row; st = SL_BLOCK: a column of a block).
 * Absent gate and obstacle slots are +0 (selects, so a non-finite state leaves them 0 too). world = 0:
 * the caller knows there are none (no gates, no obstacles) and holds zeros in those slots already, so
 * they are not written. */
SL_INLINE void sl_observe(const SlObsInput *in, float *restrict out, const int st, const int world) {
    float R[9];
    sl_quat_to_rot(in->quat_wxyz, R);
    float d[3];
    for (int a = 0; a < 3; a++) d[a] = in->target_enu_m[a] - in->pos_enu_m[a];
    float squash = 1.f / (1.f + sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]));
    for (int a = 0; a < 3; a++) {
        out[(SL_OBS_target_body + a) * st] = squash * sl_to_body(R, d, a);
        out[(SL_OBS_vel_body_m_s + a) * st] = sl_to_body(R, in->vel_enu_m_s, a);
        out[(SL_OBS_omega_body_rad_s + a) * st] = in->omega_flu_rad_s[a];
        out[(SL_OBS_target_vel_body_m_s + a) * st] = sl_to_body(R, in->target_vel_enu_m_s, a);
    }
    for (int k = 0; k < 9; k++) out[(SL_OBS_rot_body_to_world + k) * st] = R[k];
    for (int k = 0; k < SL_ACTION_HISTORY * SL_ACTION_SIZE; k++) out[(SL_OBS_last_actions + k) * st] = in->last_actions[k];
    out[(SL_OBS_hover_action) * st] = in->hover_action;
    if (!world) return;
    /* absent slots are all zeros, present flag 0 */
    #pragma GCC unroll 16 /* unrolled whole, so the loop over drones vectorizes */
    for (int g = 0; g < SL_OBS_GATES; g++) {
        const float *gate = in->gates[g];
        const int present = (float)g < in->n_gates;
        float dg[3];
        for (int a = 0; a < 3; a++) dg[a] = gate[a] - in->pos_enu_m[a];
        float sq = 1.f / (1.f + sqrtf(dg[0] * dg[0] + dg[1] * dg[1] + dg[2] * dg[2]));
        float *o = out + (SL_OBS_gates + g * SL_OBS_GATE_SIZE) * st;
        for (int a = 0; a < 3; a++) {
            o[(a) * st] = present ? sq * sl_to_body(R, dg, a) : 0.f;
            o[(3 + a) * st] = present ? sl_to_body(R, gate + 3, a) : 0.f;
        }
        o[(6) * st] = present ? gate[SL_GATE_HALF_WIDTH] : 0.f;
        o[(7) * st] = present ? gate[SL_GATE_HALF_HEIGHT] : 0.f;
        o[(8) * st] = present ? 1.f : 0.f;
    }
    #pragma GCC unroll 16 /* unrolled whole, so the loop over drones vectorizes */
    for (int k = 0; k < SL_OBS_OBSTACLES; k++) {
        const int present = (float)k < in->n_near;
        float dk[3];
        for (int a = 0; a < 3; a++) dk[a] = in->near[k][a] - in->pos_enu_m[a];
        float *o = out + (SL_OBS_obstacles + k * SL_OBS_OBSTACLE_SIZE) * st;
        for (int a = 0; a < 3; a++) o[(a) * st] = present ? sl_to_body(R, dk, a) : 0.f;
        o[(3) * st] = present ? in->near[k][3] : 0.f;
        o[(4) * st] = present ? 1.f : 0.f;
    }
}

/* Drone i's observation as the sim sees it: the state plus the randomized observation noise,
 * the next gates of its course (race) and what it senses. F / np: the environment's block and
 * row length, or a block's copy of the rows observed (sl_observe_range). */
SL_INLINE void sl_observe_drone(const SlRandomization *r, const float *restrict F, const int np, const int i,
                                uint32_t *rng, float *restrict out, const int st, const int world) {
    SlObsInput in;
    for (int a = 0; a < 3; a++) {
        in.pos_enu_m[a] = SL_D(pos_enu_m, a) + r->obs_noise_pos_m * sl_normalish(rng);
        in.vel_enu_m_s[a] = SL_D(vel_enu_m_s, a) + r->obs_noise_vel_m_s * sl_normalish(rng);
        in.omega_flu_rad_s[a] = SL_D(omega_flu_rad_s, a) + r->obs_noise_rate_rad_s * sl_normalish(rng);
        in.target_enu_m[a] = SL_D(target_enu_m, a);
        in.target_vel_enu_m_s[a] = SL_D(target_vel_enu_m_s, a);
    }
    float qn = 0.f;
    for (int a = 0; a < 4; a++) {
        in.quat_wxyz[a] = SL_D(quat_wxyz, a) + 0.5f * r->obs_noise_rot * sl_normalish(rng);
        qn = SL_FMA(in.quat_wxyz[a], in.quat_wxyz[a], qn);
    }
    qn = 1.f / sqrtf(qn);
    for (int a = 0; a < 4; a++) in.quat_wxyz[a] *= qn;
    for (int k = 0; k < SL_ACTION_HISTORY * SL_ACTION_SIZE; k++) in.last_actions[k] = SL_D(action_hist, k);
    in.hover_action = SL_D(hover_action, 0);
    if (world) {
        in.n_gates = SL_D(next_gates_count, 0);
        #pragma GCC unroll 16 /* unrolled whole, so the loop over drones vectorizes */
        for (int g = 0; g < SL_OBS_GATES; g++)
            for (int c = 0; c < SL_GATE_FLOATS; c++) in.gates[g][c] = SL_D(next_gates, g * SL_GATE_FLOATS + c);
        in.n_near = SL_D(near_count, 0);
        #pragma GCC unroll 16 /* unrolled whole, so the loop over drones vectorizes */
        for (int k = 0; k < SL_OBS_OBSTACLES; k++)
            for (int c = 0; c < 4; c++) in.near[k][c] = SL_D(near, k * 4 + c);
    }
    sl_observe(&in, out, st, world);
}

/* The rows an observation reads, as (first row, count): every drone's, and those of its gates and
 * obstacles (read only for a block where some drone has any). */
#define SL_OBSERVED_ROWS(X)                                                                          \
    X(pos_enu_m, 3) X(vel_enu_m_s, 3) X(omega_flu_rad_s, 3) X(quat_wxyz, 4) X(target_enu_m, 3)      \
    X(target_vel_enu_m_s, 3) X(action_hist, SL_ACTION_HISTORY * SL_ACTION_SIZE) X(hover_action, 1)
#define SL_OBSERVED_WORLD_ROWS(X) \
    X(next_gates_count, 1) X(next_gates, SL_OBS_GATES * SL_GATE_FLOATS) X(near_count, 1) X(near, SL_OBS_OBSTACLES * 4)


/* Transposes SL_LANES vectors in place (row r, lane c -> row c, lane r): log2(lanes) rounds of
 * two-source shuffles with constant masks, round b swapping the off-diagonal b x b blocks. */
#if SL_LANES == 16
#define SL_EACH_LANE(F, b) F(b, 0), F(b, 1), F(b, 2), F(b, 3), F(b, 4), F(b, 5), F(b, 6), F(b, 7), \
                           F(b, 8), F(b, 9), F(b, 10), F(b, 11), F(b, 12), F(b, 13), F(b, 14), F(b, 15)
#elif SL_LANES == 8
#define SL_EACH_LANE(F, b) F(b, 0), F(b, 1), F(b, 2), F(b, 3), F(b, 4), F(b, 5), F(b, 6), F(b, 7)
#elif SL_LANES == 4
#define SL_EACH_LANE(F, b) F(b, 0), F(b, 1), F(b, 2), F(b, 3)
#else
#define SL_EACH_LANE(F, b) F(b, 0)
#endif
#define SL_SWAP_LO(b, c) ((c) & (b) ? SL_LANES + (c) - (b) : (c))
#define SL_SWAP_HI(b, c) ((c) & (b) ? SL_LANES + (c) : (c) + (b))
#define SL_TRANSPOSE_ROUND(b)                                                                   \
    if (SL_LANES > (b)) {                                                                       \
        const SlVecI lo = {SL_EACH_LANE(SL_SWAP_LO, b)}, hi = {SL_EACH_LANE(SL_SWAP_HI, b)};  \
        for (int r = 0; r < SL_LANES; r++)                                                      \
            if (!(r & (b))) {                                                                   \
                const SlVec x = v[r], y = v[r + (b)];                                           \
                v[r] = __builtin_shuffle(x, y, lo);                                             \
                v[r + (b)] = __builtin_shuffle(x, y, hi);                                       \
            }                                                                                   \
    }
SL_INLINE void sl_transpose(SlVec v[SL_LANES]) {
    SL_TRANSPOSE_ROUND(8) SL_TRANSPOSE_ROUND(4) SL_TRANSPOSE_ROUND(2) SL_TRANSPOSE_ROUND(1)
}
#undef SL_TRANSPOSE_ROUND
#undef SL_SWAP_LO
#undef SL_SWAP_HI
#undef SL_EACH_LANE

/* The end of the tiles (SL_LANES slots each) that hold the slots every drone has: the gate and
 * obstacle slots come after them, so a block without any world writes zeros from here on. */
#define SL_OBS_OWN_END ((SL_OBS_gates + SL_LANES - 1) / SL_LANES * SL_LANES)
_Static_assert(SL_OBS_obstacles == SL_OBS_gates_END + 1 && SL_OBS_obstacles_END == SL_OBS_SIZE - 1,
               "the gate and obstacle slots must be the last of the observation");
_Static_assert(SL_OBS_SIZE - SL_LANES >= SL_OBS_OWN_END, "the last, overlapping tile of zeros must hold only world slots");

/* Observe drones i0..i1-1 into e->obs, block by block: the observed rows copied into a block
 * (fixed offsets, contiguous loads), the observations computed across drones into columns
 * (contiguous stores), then transposed SL_LANES x SL_LANES at a time into the rows the policy reads.
 * A block where no drone has a gate or an obstacle to observe (hover, own worlds) neither reads
 * those rows nor computes their slots: they stay zeros in the columns. */
static void sl_observe_range(SlEnv *e, const int i0, const int i1) {
    uint32_t *restrict rngs = e->rng;
    float *restrict obs = e->obs;
    const float *restrict F = e->f;
    const int np = e->n_pad;
    float *restrict Xb = e->block; /* [SL_N_ROWS][SL_BLOCK]; the rows not observed stay unused */
    float T[SL_OBS_SIZE * SL_BLOCK] __attribute__((aligned(64)));
    for (int b0 = i0; b0 < i1; b0 += SL_BLOCK) {
        const int nb = ((i1 - b0 < SL_BLOCK ? i1 - b0 : SL_BLOCK) + SL_LANES - 1) / SL_LANES * SL_LANES;
        int world = 0;
        for (int j = 0; j < nb; j++)
            world |= (F[(ptrdiff_t)SL_ROW_next_gates_count * np + b0 + j] > 0.f) | (F[(ptrdiff_t)SL_ROW_near_count * np + b0 + j] > 0.f);
#define SL_COPY_ROWS(name, w) \
        for (int c = 0; c < (w); c++) sl_copy(Xb + (SL_ROW_##name + c) * SL_BLOCK, F + (ptrdiff_t)(SL_ROW_##name + c) * np + b0, nb);
        SL_OBSERVED_ROWS(SL_COPY_ROWS)
        if (world) {
            SL_OBSERVED_WORLD_ROWS(SL_COPY_ROWS)
#pragma GCC ivdep
            for (int j = 0; j < nb; j++) {
                uint32_t rng = rngs[b0 + j];
                sl_observe_drone(&e->rnd, Xb, SL_BLOCK, j, &rng, T + j, SL_BLOCK, 1);
                rngs[b0 + j] = rng;
            }
        } else {
            for (int k = SL_OBS_gates; k < SL_OBS_OWN_END; k++) /* world slots in the last tile of the own ones */
                for (int j = 0; j < nb; j++) T[k * SL_BLOCK + j] = 0.f;
#pragma GCC ivdep
            for (int j = 0; j < nb; j++) {
                uint32_t rng = rngs[b0 + j];
                sl_observe_drone(&e->rnd, Xb, SL_BLOCK, j, &rng, T + j, SL_BLOCK, 0);
                rngs[b0 + j] = rng;
            }
        }
#undef SL_COPY_ROWS
        /* columns -> rows, a tile of SL_LANES slots at a time; the last tile overlaps the one before
         * where the observation is not whole vectors. Without a world: the tiles of the own slots,
         * then zero vectors for the rest of each row. */
        const int k_end = world ? SL_OBS_SIZE : SL_OBS_OWN_END;
        const SlVec zero = {0};
        for (int j0 = 0; j0 < nb; j0 += SL_LANES) {
            float *row = obs + (size_t)(b0 + j0) * SL_OBS_SIZE;
            for (int k0 = 0; k0 < k_end; k0 += SL_LANES) {
                const int k = k0 + SL_LANES <= SL_OBS_SIZE ? k0 : SL_OBS_SIZE - SL_LANES;
                SlVec v[SL_LANES];
                for (int r = 0; r < SL_LANES; r++) v[r] = *(const SlVec *)(T + (k + r) * SL_BLOCK + j0);
                sl_transpose(v);
                for (int c = 0; c < SL_LANES; c++) *(SlVecU *)(row + (size_t)c * SL_OBS_SIZE + k) = v[c];
            }
            for (int k0 = k_end; k0 < SL_OBS_SIZE; k0 += SL_LANES) {
                const int k = k0 + SL_LANES <= SL_OBS_SIZE ? k0 : SL_OBS_SIZE - SL_LANES; /* only world slots: see SL_OBS_OWN_END */
                for (int c = 0; c < SL_LANES; c++) *(SlVecU *)(row + (size_t)c * SL_OBS_SIZE + k) = zero;
            }
        }
    }
}

/* ============================================================================================
 * 5. Domain randomization: draw drone i (size family, then independent noise) from the profile.
 * ========================================================================================== */
static void sl_randomize_drone(SlEnv *e, int i) {
    const SlParams *p = &e->nominal;
    const SlRandomization *r = &e->rnd;
    float *F = e->f;
    const int np = e->n_pad;
    uint32_t *rng = &e->rng[i];

    /* size family: mass ~ s^3, inertia ~ m l^2, kf ~ s^4 (prop diameter^4), km ~ s^5, drag ~ s^2,
     * rotor inertia ~ s^5; omega_max set for the drawn thrust-to-weight */
    float s = 1.f, arm = p->arm_m, kf = p->kf_n_per_rad2s2, km = p->km_nm_per_rad2s2;
    float mass = p->mass_kg, omega_max = p->omega_max_rad_s;
    if (r->arm_m_range[1] > 0.f) {
        arm = expf(sl_uniform_in(rng, logf(r->arm_m_range[0]), logf(r->arm_m_range[1])));
        s = arm / p->arm_m;
        mass = p->mass_kg * s * s * s;
        kf = p->kf_n_per_rad2s2 * s * s * s * s;
        km = p->km_nm_per_rad2s2 * s * s * s * s * s;
        float tw = sl_uniform_in(rng, r->thrust_to_weight_range[0], r->thrust_to_weight_range[1]);
        omega_max = sqrtf(tw * mass * SL_GRAVITY_M_S2 / (4.f * kf));
    }
    float speed_scale = omega_max / p->omega_max_rad_s, mass_scale = mass / p->mass_kg;

    /* nominal: what the user's profile says about this drone */
    SL_D(arm_m, 0) = arm;
    SL_D(radius_m, 0) = SL_RADIUS_PER_ARM * arm;
    SL_D(nom_kf, 0) = kf;
    SL_D(nom_km, 0) = km;
    SL_D(nom_omega_max, 0) = omega_max;
    for (int a = 0; a < 3; a++) {
        SL_D(nom_curve, a) = p->throttle_to_omega_rad_s[a] * speed_scale;
        SL_D(nom_inertia, a) = p->inertia_kg_m2[a] * mass_scale * s * s;
    }
    SL_D(nom_omega_min, 0) = sl_max(p->throttle_to_omega_rad_s[0] * speed_scale, 0.f);
    SL_D(nom_thrust_max, 0) = 4.f * kf * omega_max * omega_max;

    /* the true drone: nominal with independent noise */
    SL_D(mass_kg, 0) = mass * sl_factor(rng, r->mass_frac);
    float inertia_factor = sl_factor(rng, r->inertia_frac);
    for (int a = 0; a < 3; a++) SL_D(inertia_kg_m2, a) = SL_D(nom_inertia, a) * inertia_factor;
    SL_D(kf_n_per_rad2s2, 0) = kf * sl_factor(rng, r->kf_frac);
    SL_D(km_nm_per_rad2s2, 0) = km * sl_factor(rng, r->km_frac);
    SL_D(motor_tau_up_s, 0) = p->motor_tau_up_s * sl_factor(rng, r->motor_tau_frac);
    SL_D(motor_tau_down_s, 0) = p->motor_tau_down_s * sl_factor(rng, r->motor_tau_frac);
    SL_D(motor_delay_s, 0) = p->motor_delay_s * sl_factor(rng, r->motor_delay_frac);
    float drag_factor = sl_factor(rng, r->drag_frac);
    for (int a = 0; a < 3; a++) SL_D(drag_n_per_m_s, a) = p->drag_n_per_m_s[a] * s * s * drag_factor;
    SL_D(rotor_inertia_kg_m2, 0) = p->rotor_inertia_kg_m2 * s * s * s * s * s;
    float kv = sl_factor(rng, r->omega_max_frac);
    SL_D(omega_max_rad_s, 0) = omega_max * kv;
    float v_frac = r->battery_v_frac_range[1] > 0.f
                       ? sl_uniform_in(rng, r->battery_v_frac_range[0], r->battery_v_frac_range[1]) : 1.f;
    SL_D(battery_v, 0) = p->battery_v_nominal * v_frac;
    /* The same command gives this much faster (slower) a rotor. In ctbr mode the flight
     * controller compensates the battery voltage (PX4 and ArduPilot both do), so only the KV
     * spread remains; the voltage still caps the top speed. */
    SL_D(omega_scale, 0) = e->action_mode == SL_ACTION_CTBR ? kv : kv * v_frac;
    SL_D(latency_s, 0) = sl_uniform_in(rng, r->latency_s_range[0], r->latency_s_range[1]);
    SL_D(crash_speed_m_s, 0) = p->crash_speed_m_s;

    /* constant disturbance force and torque for the episode, random direction */
    float weight = SL_D(mass_kg, 0) * SL_GRAVITY_M_S2;
    float torque_max = 2.f * arm * 0.70710678f * SL_D(kf_n_per_rad2s2, 0) * omega_max * omega_max;
    for (int a = 0; a < 3; a++) {
        SL_D(force_n, a) = r->force_frac_of_weight * weight * (2.f * sl_uniform(rng) - 1.f) * 0.57735f;
        SL_D(torque_nm, a) = r->torque_frac_of_max * torque_max * (2.f * sl_uniform(rng) - 1.f) * 0.57735f;
    }

    /* the action that hovers the nominal drone */
    float omega_hover = sqrtf(mass * SL_GRAVITY_M_S2 / (4.f * kf)), hover;
    if (e->action_mode == SL_ACTION_CTBR) {
        hover = 2.f * (mass * SL_GRAVITY_M_S2 / SL_D(nom_thrust_max, 0)) - 1.f;
    } else { /* the throttle whose steady rotor speed is omega_hover */
        const float curve[3] = {SL_D(nom_curve, 0), SL_D(nom_curve, 1), SL_D(nom_curve, 2)};
        hover = 2.f * sl_throttle_for_omega(curve, omega_hover) - 1.f;
    }
    SL_D(hover_action, 0) = sl_clamp(hover, -1.f, 1.f);
}

/* Derived per-drone numbers, after a draw or after Python wrote parameters. */
static void sl_derive_drone(SlEnv *e, int i) {
    float *F = e->f;
    const int np = e->n_pad;
    SL_D(delay_steps, 0) = rintf(SL_D(motor_delay_s, 0) / e->dt_s);
    SL_D(latency_steps, 0) = rintf(SL_D(latency_s, 0) / e->dt_s);
}

/* Fills drone i's command history as if its current rotor speeds (and `held` action) had been
 * commanded all along, so a reset or a set state starts without a transient. */
static void sl_settle_commands(SlEnv *e, int i, const float held[4]) {
    float *F = e->f;
    const int np = e->n_pad;
    for (int m = 0; m < 4; m++) {
        SL_D(action_prev, m) = SL_D(action_now, m) = held[m];
        for (int k = 0; k < SL_ACTION_HISTORY; k++) SL_D(action_hist, k * 4 + m) = held[m];
        for (int slot = 0; slot <= (int)e->delay_mask; slot++)
            e->ring[SL_RING_INDEX(e, slot, m, i)] = SL_D(rotor_rad_s, m) / SL_D(omega_scale, 0);
    }
    for (int c = 0; c < 3; c++) { SL_D(rate_integral, c) = 0.f; SL_D(rate_prev, c) = SL_D(omega_flu_rad_s, c); }
    SL_D(crashed, 0) = 0.f;
}

#endif /* SKYLOOP_ENV_H */
