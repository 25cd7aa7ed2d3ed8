/* drone.h -- the Skyloop quadrotor simulator: physics, motors, flight-controller inner loop,
 * domain randomization, observations and the tasks (hover / go-to, race through gates, orbit,
 * follow, formation, obstacles; mixed per episode, many drones per shared space), top to bottom.
 *
 * Conventions (see DESIGN.md):
 *   - SI units everywhere, units in names.
 *   - World frame ENU (x east, y north, z up); body frame FLU (x forward, y left, z up).
 *   - Quaternions w, x, y, z, body -> world.
 *   - Motor order (PX4 / ArduPilot quad-X): 1 front-right CCW, 2 back-left CCW,
 *     3 front-left CW, 4 back-right CW (indices 0..3 here). CCW is positive about +z (seen from above).
 *
 * Memory layout: every per-drone quantity is a structure of arrays (SoA). A field of width W
 * lives in one float block [W][n_pad], so component c of drone i is field[c * n_pad + i].
 * The inner loops run over drones with no branches (only selects), so the compiler vectorizes
 * them across drones (8 or 16 drones per instruction, depending on the host's vector unit).
 *
 * Python reads sizes, offsets and field tables from here through cffi; it never copies them.
 */
#ifndef SKYLOOP_DRONE_H
#define SKYLOOP_DRONE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define SL_INLINE static inline __attribute__((always_inline))
#else
#define SL_INLINE static inline
#endif

/* ============================================================================================
 * 1. Constants
 * ========================================================================================== */
#define SL_GRAVITY_M_S2 9.80665f
#define SL_N_MOTORS 4
/* The vector width the compiler targets (from its macros, at build time): the inner loops run
 * over SL_LANES drones per instruction, and per-drone arrays are padded to whole vectors. */
#if defined(__AVX512F__)
#define SL_VECTOR_BYTES 64
#define SL_ISA "x86-64 AVX-512F" SL_ISA_FMA
#elif defined(__AVX2__)
#define SL_VECTOR_BYTES 32
#define SL_ISA "x86-64 AVX2" SL_ISA_FMA
#elif defined(__AVX__)
#define SL_VECTOR_BYTES 32
#define SL_ISA "x86-64 AVX" SL_ISA_FMA
#elif defined(__SSE2__)
#define SL_VECTOR_BYTES 16
#define SL_ISA "x86-64 SSE2"
#elif defined(__ARM_NEON)
#define SL_VECTOR_BYTES 16
#define SL_ISA "ARM NEON"
#else
#define SL_VECTOR_BYTES 4
#define SL_ISA "scalar"
#endif
#if defined(__FMA__)
#define SL_ISA_FMA " + FMA"
#else
#define SL_ISA_FMA ""
#endif
#define SL_LANES (SL_VECTOR_BYTES / 4) /* floats per vector */
#define SL_BLOCK 64            /* drones stepped together through a control step (cache blocking; a multiple of SL_LANES) */
#define SL_DELAY_SELECT_MAX 8  /* a block whose delays spread over more physics steps reads the ring with a gather */
#define SL_DELAY_SLOTS 32      /* motor-command ring buffer, in physics steps (power of two): the least */
#define SL_MAX_DELAY_SLOTS 8192 /* ... and the most (longer delays at a finer physics_dt_s are refused) */
#define SL_ACTION_HISTORY 2    /* K: the last K actions are part of the observation */
#define SL_ACTION_SIZE 4
#define SL_MAX_GATES 16        /* gates per course */
#define SL_MAX_OBSTACLES 32    /* sphere obstacles per space */
#define SL_OBS_GATES 2         /* K: the next K gates are observed */
#define SL_OBS_OBSTACLES 4     /* M: the nearest M obstacles (spheres and other drones) are observed */
#define SL_GATE_FLOATS 8       /* a gate: centre xyz (ENU), unit normal xyz (direction of flight), half width, half height */
#define SL_RADIUS_PER_ARM 1.5f /* a drone's collision radius: arm plus propeller, about 1.5 arm lengths */

enum { SL_ACTION_MOTOR = 0, SL_ACTION_CTBR = 1 };

/* The tasks. Each reduces to "where should I be, and what must I avoid": a target (which may
 * move), the next gates, and the nearest obstacles, all in one observation layout. */
#define SL_TASKS(X) X(hover) X(race) X(orbit) X(follow) X(formation) X(obstacles)
#define SL_TASK_ENUM(name) SL_TASK_##name,
enum { SL_TASKS(SL_TASK_ENUM) SL_N_TASKS };
#undef SL_TASK_ENUM
#define SL_TASK_NAME(name) #name,
static const char *const SL_TASK_NAMES[] = {SL_TASKS(SL_TASK_NAME)};
#undef SL_TASK_NAME

/* min / max / clamp as selects (they vectorize; fminf and fmaxf do not without fast-math) */
SL_INLINE float sl_min(float a, float b) { return a < b ? a : b; }
SL_INLINE float sl_max(float a, float b) { return a > b ? a : b; }
SL_INLINE float sl_clamp(float x, float lo, float hi) { return sl_min(sl_max(x, lo), hi); }

/* a * b + c, fused (one rounding) where the target has FMA. The build does not let the compiler
 * fuse on its own (-ffp-contract=off): it would fuse differently in vector and scalar code, and
 * the vector kernel must give the scalar reference's numbers bit for bit. */
#if defined(__FP_FAST_FMAF)
#define SL_FMA(a, b, c) fmaf((a), (b), (c))
#else
#define SL_FMA(a, b, c) ((a) * (b) + (c))
#endif

/* Motor geometry of the quad-X, in the order above. Position of motor m in FLU is
 * (SL_MX[m], SL_MY[m]) * arm_m / sqrt(2); SL_SPIN[m] = +1 for CCW, -1 for CW. */
static const float SL_MX[4] = {+1.f, -1.f, +1.f, -1.f};
static const float SL_MY[4] = {-1.f, +1.f, +1.f, -1.f};
static const float SL_SPIN[4] = {+1.f, +1.f, -1.f, -1.f};

/* ============================================================================================
 * 2. Parameters. One struct per purpose; field names carry units. Each struct has a field
 *    table (name, offset, count, valid range, meaning) that the Python loader uses to read and
 *    validate profile JSON, so the names below are the names in the JSON files.
 * ========================================================================================== */

/* The drone itself (a profile's "params" block). */
typedef struct {
    float mass_kg;
    float arm_m;                      /* centre to motor axis */
    float inertia_kg_m2[3];           /* principal, body FLU */
    float kf_n_per_rad2s2;            /* thrust = kf * omega^2, per motor */
    float km_nm_per_rad2s2;           /* reaction torque = km * omega^2, per motor */
    float omega_max_rad_s;            /* rotor speed limit at nominal battery voltage */
    float throttle_to_omega_rad_s[3]; /* steady rotor speed for throttle u in [0,1]: c0 + c1 u + c2 u^2 */
    float motor_tau_up_s;             /* first-order lag time constant, speeding up */
    float motor_tau_down_s;           /* ... slowing down */
    float motor_delay_s;              /* pure delay from command to motor */
    float drag_n_per_m_s[3];          /* linear drag per body axis */
    float rotor_inertia_kg_m2;        /* one rotor + prop about its axis (gyroscopic term) */
    float battery_v_nominal;
    float crash_speed_m_s;            /* ground impact faster than this is a crash */
    float rate_max_rad_s[3];          /* ctbr: body rate at action +-1 */
    float rate_kp_per_s[3];           /* ctbr rate loop: angular accel = kp * error + ki * integral */
    float rate_ki_per_s2[3];
    float rate_kd[3];                 /* ... - kd * measured angular acceleration (damping) */
} SlParams;

/* Domain randomization around the profile (a profile's "randomization" block).
 * Ranges are [lo, hi]; fractions f draw a factor uniformly in [1 - f, 1 + f]. All zeros = the
 * exact nominal drone. */
typedef struct {
    float arm_m_range[2];             /* size family: arm drawn log-uniformly; [0,0] = profile's size */
    float thrust_to_weight_range[2];  /* with a size family: omega_max set for this thrust-to-weight */
    float mass_frac;
    float inertia_frac;
    float kf_frac;
    float km_frac;
    float motor_tau_frac;
    float motor_delay_frac;
    float drag_frac;
    float omega_max_frac;             /* motor KV spread: the same throttle gives a different speed */
    float battery_v_frac_range[2];    /* battery voltage / nominal, e.g. [0.85, 1.0]; [0,0] = 1 */
    float latency_s_range[2];         /* command latency, at most one control period */
    float force_frac_of_weight;       /* constant disturbance force per episode, up to this * m g */
    float torque_frac_of_max;         /* constant disturbance torque, up to this * max roll torque */
    float obs_noise_pos_m;            /* standard deviations of observation noise */
    float obs_noise_vel_m_s;
    float obs_noise_rot;
    float obs_noise_rate_rad_s;
} SlRandomization;

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
    float gate_size_m;                /* ... inner side of the opening, plus 4 arm lengths of the drone drawn */
    float gate_frame_m;               /* width of a gate's frame around its opening (hitting it is a crash) */
    float reward_gate;                /* bonus per gate passed */
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
} SlTaskConfig;

/* Field tables: one row per field, read by the Python loader. */
typedef struct {
    const char *name;
    int offset;   /* bytes */
    int count;    /* floats */
    float lo, hi; /* valid range (inclusive) */
    const char *doc;
} SlField;

#define SL_F(T, name, n, lo, hi, doc) {#name, (int)offsetof(T, name), n, lo, hi, doc}
static const SlField SL_PARAM_FIELDS[] = {
    SL_F(SlParams, mass_kg, 1, 1e-3f, 100.f, "take-off mass"),
    SL_F(SlParams, arm_m, 1, 0.01f, 2.f, "centre to motor axis"),
    SL_F(SlParams, inertia_kg_m2, 3, 1e-7f, 10.f, "principal inertia, body FLU"),
    SL_F(SlParams, kf_n_per_rad2s2, 1, 1e-12f, 1e-2f, "thrust coefficient per motor"),
    SL_F(SlParams, km_nm_per_rad2s2, 1, 1e-14f, 1e-3f, "torque coefficient per motor"),
    SL_F(SlParams, omega_max_rad_s, 1, 10.f, 1e4f, "rotor speed limit"),
    SL_F(SlParams, throttle_to_omega_rad_s, 3, -1e4f, 1e4f, "steady speed = c0 + c1 u + c2 u^2"),
    SL_F(SlParams, motor_tau_up_s, 1, 1e-4f, 2.f, "motor time constant up"),
    SL_F(SlParams, motor_tau_down_s, 1, 1e-4f, 2.f, "motor time constant down"),
    SL_F(SlParams, motor_delay_s, 1, 0.f, 0.5f, "motor pure delay (ESC, firmware filters: up to a few hundred ms)"),
    SL_F(SlParams, drag_n_per_m_s, 3, 0.f, 100.f, "linear drag per body axis"),
    SL_F(SlParams, rotor_inertia_kg_m2, 1, 0.f, 1.f, "rotor inertia (gyroscopic)"),
    SL_F(SlParams, battery_v_nominal, 1, 1.f, 100.f, "nominal battery voltage"),
    SL_F(SlParams, crash_speed_m_s, 1, 0.1f, 100.f, "ground impact crash speed"),
    SL_F(SlParams, rate_max_rad_s, 3, 0.1f, 100.f, "ctbr body rate at action 1"),
    SL_F(SlParams, rate_kp_per_s, 3, 0.f, 1e4f, "ctbr rate loop P gain"),
    SL_F(SlParams, rate_ki_per_s2, 3, 0.f, 1e5f, "ctbr rate loop I gain"),
    SL_F(SlParams, rate_kd, 3, 0.f, 100.f, "ctbr rate loop D gain on angular acceleration"),
};
static const SlField SL_RANDOMIZATION_FIELDS[] = {
    SL_F(SlRandomization, arm_m_range, 2, 0.f, 2.f, "size family arm range"),
    SL_F(SlRandomization, thrust_to_weight_range, 2, 0.f, 20.f, "size family thrust/weight"),
    SL_F(SlRandomization, mass_frac, 1, 0.f, 0.9f, ""),
    SL_F(SlRandomization, inertia_frac, 1, 0.f, 0.9f, ""),
    SL_F(SlRandomization, kf_frac, 1, 0.f, 0.9f, ""),
    SL_F(SlRandomization, km_frac, 1, 0.f, 0.9f, ""),
    SL_F(SlRandomization, motor_tau_frac, 1, 0.f, 0.9f, ""),
    SL_F(SlRandomization, motor_delay_frac, 1, 0.f, 1.f, ""),
    SL_F(SlRandomization, drag_frac, 1, 0.f, 1.f, ""),
    SL_F(SlRandomization, omega_max_frac, 1, 0.f, 0.5f, ""),
    SL_F(SlRandomization, battery_v_frac_range, 2, 0.f, 1.5f, ""),
    SL_F(SlRandomization, latency_s_range, 2, 0.f, 0.1f, ""),
    SL_F(SlRandomization, force_frac_of_weight, 1, 0.f, 1.f, ""),
    SL_F(SlRandomization, torque_frac_of_max, 1, 0.f, 1.f, ""),
    SL_F(SlRandomization, obs_noise_pos_m, 1, 0.f, 10.f, ""),
    SL_F(SlRandomization, obs_noise_vel_m_s, 1, 0.f, 10.f, ""),
    SL_F(SlRandomization, obs_noise_rot, 1, 0.f, 1.f, ""),
    SL_F(SlRandomization, obs_noise_rate_rad_s, 1, 0.f, 10.f, ""),
};
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
    SL_F(SlTaskConfig, gate_size_m, 1, 0.1f, 100.f, ""),
    SL_F(SlTaskConfig, gate_frame_m, 1, 0.f, 10.f, ""),
    SL_F(SlTaskConfig, reward_gate, 1, 0.f, 1e4f, ""),
    SL_F(SlTaskConfig, orbit_radius_m_range, 2, 0.1f, 1e3f, ""),
    SL_F(SlTaskConfig, orbit_speed_m_s_range, 2, 0.f, 100.f, ""),
    SL_F(SlTaskConfig, follow_speed_m_s_max, 1, 0.f, 100.f, ""),
    SL_F(SlTaskConfig, track_radius_m, 1, 1e-3f, 100.f, ""),
    SL_F(SlTaskConfig, track_success_frac, 1, 0.f, 1.f, ""),
    SL_F(SlTaskConfig, formation_spacing_m, 1, 0.05f, 100.f, ""),
    SL_F(SlTaskConfig, obstacle_count, 1, 0.f, (float)SL_MAX_OBSTACLES, ""),
    SL_F(SlTaskConfig, obstacle_radius_m_range, 2, 0.01f, 100.f, ""),
    SL_F(SlTaskConfig, obstacle_goal_dist_m_range, 2, 0.f, 1e4f, ""),
};
#undef SL_F
#define SL_N_PARAM_FIELDS ((int)(sizeof SL_PARAM_FIELDS / sizeof SL_PARAM_FIELDS[0]))
#define SL_N_RANDOMIZATION_FIELDS ((int)(sizeof SL_RANDOMIZATION_FIELDS / sizeof SL_RANDOMIZATION_FIELDS[0]))
#define SL_N_TASK_FIELDS ((int)(sizeof SL_TASK_FIELDS / sizeof SL_TASK_FIELDS[0]))

/* ============================================================================================
 * 3. Observation layout. The one definition; the sim, trainer, exporter and flight runner
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
 * 4. Random numbers: one xorshift32 stream per drone, seeded from (seed, drone index) with
 *    splitmix64, so the same seed gives the same rollout bit for bit, for any batch size.
 * ========================================================================================== */
SL_INLINE uint32_t sl_rng_next(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}
SL_INLINE float sl_uniform(uint32_t *s) { return (float)(sl_rng_next(s) >> 8) * (1.0f / 16777216.0f); }
SL_INLINE float sl_uniform_in(uint32_t *s, float lo, float hi) { return lo + (hi - lo) * sl_uniform(s); }
SL_INLINE float sl_factor(uint32_t *s, float frac) { return 1.f + frac * (2.f * sl_uniform(s) - 1.f); }
/* Approximately normal noise, cheap and branch-free: the two 16-bit halves of one draw make a
 * triangular variate, scaled to unit variance (bounded at +-2.45). */
SL_INLINE float sl_normalish(uint32_t *s) {
    uint32_t x = sl_rng_next(s);
    float u = (float)(x & 0xFFFFu) + (float)(x >> 16);
    return (u * (1.0f / 65536.0f) - 1.f) * 2.4494897f;
}
static uint32_t sl_seed_stream(uint64_t seed, uint64_t index) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    uint32_t s = (uint32_t)(z ^ (z >> 32));
    return s ? s : 0x6D2B79F5u; /* xorshift must not start at zero */
}

/* ============================================================================================
 * 5. Rigid-body dynamics. State: position and velocity (world ENU), attitude quaternion
 *    (body FLU -> world), body rates (FLU) and the four rotor speeds. The rotor speeds are
 *    integrated together with the body, so thrust follows the motor lag inside each step.
 * ========================================================================================== */
typedef struct {
    float p[3], v[3], q[4], w[3], r[4];
} SlState;

/* What the dynamics need of one drone, loaded once per control step. */
typedef struct {
    float inv_mass, J[3], inv_J[3], kf, km, l; /* l = arm / sqrt(2): motor offset along x and y */
    float inv_tau_up, inv_tau_down, drag[3], rotor_J, force[3], torque[3];
} SlBody;

/* Rotation matrix (body -> world) of a unit quaternion, row-major. */
SL_INLINE void sl_quat_to_rot(const float q[4], float R[9]) {
    float w = q[0], x = q[1], y = q[2], z = q[3];
    R[0] = SL_FMA(-2.f, SL_FMA(y, y, z * z), 1.f); R[1] = 2.f * SL_FMA(x, y, -w * z); R[2] = 2.f * SL_FMA(x, z, w * y);
    R[3] = 2.f * SL_FMA(x, y, w * z); R[4] = SL_FMA(-2.f, SL_FMA(x, x, z * z), 1.f); R[5] = 2.f * SL_FMA(y, z, -w * x);
    R[6] = 2.f * SL_FMA(x, z, -w * y); R[7] = 2.f * SL_FMA(y, z, w * x); R[8] = SL_FMA(-2.f, SL_FMA(x, x, y * y), 1.f);
}

/* First-order motor lag with separate up / down time constants: d(omega)/dt. */
SL_INLINE float sl_motor_rate(float cmd, float omega, float inv_tau_up, float inv_tau_down) {
    float err = cmd - omega;
    return err * (err > 0.f ? inv_tau_up : inv_tau_down);
}

/* Time derivative of the state, given the (delayed) rotor speed command. */
SL_INLINE SlState sl_deriv(const SlState *s, const SlBody *b, const float cmd[4]) {
    SlState d;
    float T[4], thrust = 0.f, yaw_torque = 0.f, rotor_h = 0.f;
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) {
        d.r[m] = sl_motor_rate(cmd[m], s->r[m], b->inv_tau_up, b->inv_tau_down);
        float w2 = s->r[m] * s->r[m];
        T[m] = b->kf * w2;
        thrust += T[m];
        yaw_torque = SL_FMA(-SL_SPIN[m] * b->km, w2, yaw_torque); /* a CCW rotor pushes the body CW */
        rotor_h = SL_FMA(SL_SPIN[m] * b->rotor_J, s->r[m], rotor_h);
    }
    /* X-frame torques: r x (0, 0, T) = (y T, -x T, 0) */
    float tau_x = b->l * (SL_MY[0] * T[0] + SL_MY[1] * T[1] + SL_MY[2] * T[2] + SL_MY[3] * T[3]);
    float tau_y = -b->l * (SL_MX[0] * T[0] + SL_MX[1] * T[1] + SL_MX[2] * T[2] + SL_MX[3] * T[3]);

    float R[9];
    sl_quat_to_rot(s->q, R);
    /* linear drag in body axes: F_b = -drag * v_b, v_b = R^T v */
    float vb0 = SL_FMA(R[6], s->v[2], SL_FMA(R[3], s->v[1], R[0] * s->v[0]));
    float vb1 = SL_FMA(R[7], s->v[2], SL_FMA(R[4], s->v[1], R[1] * s->v[0]));
    float vb2 = SL_FMA(R[8], s->v[2], SL_FMA(R[5], s->v[1], R[2] * s->v[0]));
    float fb0 = -b->drag[0] * vb0, fb1 = -b->drag[1] * vb1, fb2 = SL_FMA(-b->drag[2], vb2, thrust);
    for (int a = 0; a < 3; a++) {
        d.p[a] = s->v[a];
        d.v[a] = SL_FMA(R[3 * a + 2], fb2, SL_FMA(R[3 * a + 1], fb1, SL_FMA(R[3 * a], fb0, b->force[a]))) * b->inv_mass;
    }
    d.v[2] -= SL_GRAVITY_M_S2;

    /* attitude: q_dot = q * (0, w) / 2 */
    float qw = s->q[0], qx = s->q[1], qy = s->q[2], qz = s->q[3];
    float wx = s->w[0], wy = s->w[1], wz = s->w[2];
    d.q[0] = 0.5f * SL_FMA(-qz, wz, SL_FMA(-qy, wy, -qx * wx));
    d.q[1] = 0.5f * SL_FMA(-qz, wy, SL_FMA(qy, wz, qw * wx));
    d.q[2] = 0.5f * SL_FMA(qz, wx, SL_FMA(-qx, wz, qw * wy));
    d.q[3] = 0.5f * SL_FMA(-qy, wx, SL_FMA(qx, wy, qw * wz));

    /* Euler's equation with the gyroscopic term of body and rotors: J w_dot = tau - w x (J w + h z) */
    float hx = b->J[0] * wx, hy = b->J[1] * wy, hz = SL_FMA(b->J[2], wz, rotor_h);
    d.w[0] = (tau_x + b->torque[0] - SL_FMA(wy, hz, -wz * hy)) * b->inv_J[0];
    d.w[1] = (tau_y + b->torque[1] - SL_FMA(wz, hx, -wx * hz)) * b->inv_J[1];
    d.w[2] = (yaw_torque + b->torque[2] - SL_FMA(wx, hy, -wy * hx)) * b->inv_J[2];
    return d;
}

SL_INLINE SlState sl_add_scaled(const SlState *s, const SlState *d, float h) {
    SlState o;
    for (int a = 0; a < 3; a++) { o.p[a] = SL_FMA(h, d->p[a], s->p[a]); o.v[a] = SL_FMA(h, d->v[a], s->v[a]); o.w[a] = SL_FMA(h, d->w[a], s->w[a]); }
    for (int a = 0; a < 4; a++) { o.q[a] = SL_FMA(h, d->q[a], s->q[a]); o.r[a] = SL_FMA(h, d->r[a], s->r[a]); }
    return o;
}

/* One classic RK4 step of dt, the command held constant; the quaternion is renormalized. */
SL_INLINE void sl_rk4(SlState *s, const SlBody *b, const float cmd[4], float dt) {
    SlState k1 = sl_deriv(s, b, cmd);
    SlState s2 = sl_add_scaled(s, &k1, 0.5f * dt);
    SlState k2 = sl_deriv(&s2, b, cmd);
    SlState s3 = sl_add_scaled(s, &k2, 0.5f * dt);
    SlState k3 = sl_deriv(&s3, b, cmd);
    SlState s4 = sl_add_scaled(s, &k3, dt);
    SlState k4 = sl_deriv(&s4, b, cmd);
    float h = dt / 6.f;
#define SL_RK4_SUM(f, a) SL_FMA(h, SL_FMA(2.f, k3.f[a], SL_FMA(2.f, k2.f[a], k1.f[a])) + k4.f[a], s->f[a])
    for (int a = 0; a < 3; a++) { s->p[a] = SL_RK4_SUM(p, a); s->v[a] = SL_RK4_SUM(v, a); s->w[a] = SL_RK4_SUM(w, a); }
    for (int a = 0; a < 4; a++) { s->q[a] = SL_RK4_SUM(q, a); s->r[a] = SL_RK4_SUM(r, a); }
#undef SL_RK4_SUM
    float inv_norm = 1.f / sqrtf(SL_FMA(s->q[3], s->q[3], SL_FMA(s->q[2], s->q[2], SL_FMA(s->q[1], s->q[1], s->q[0] * s->q[0]))));
    for (int a = 0; a < 4; a++) s->q[a] *= inv_norm;
}

/* Ground plane z = 0: a drone on the ground rests on it (no sinking, no sliding, no spinning);
 * touching down faster than crash_speed, or tilted more than 60 degrees, is a crash (*crash
 * becomes 1). Returns 1 while in contact. Branch-free. */
SL_INLINE float sl_ground(SlState *s, float crash_speed_m_s, float *crash) {
    int contact = s->p[2] < 0.f;
    float up_z = 1.f - 2.f * (s->q[1] * s->q[1] + s->q[2] * s->q[2]); /* body z . world z */
    *crash = (contact & ((-s->v[2] > crash_speed_m_s) | (up_z < 0.5f))) ? 1.f : *crash;
    s->p[2] = contact ? 0.f : s->p[2];
    s->v[2] = contact ? sl_max(s->v[2], 0.f) : s->v[2];
    for (int a = 0; a < 2; a++) s->v[a] = contact ? 0.f : s->v[a];
    for (int a = 0; a < 3; a++) s->w[a] = contact ? 0.f : s->w[a];
    return contact ? 1.f : 0.f;
}

/* ============================================================================================
 * 6. From action to rotor-speed command.
 *    motor: a in [-1,1] -> throttle u = (a+1)/2 -> omega command through the NOMINAL drone's
 *           throttle curve. The real (randomized) motor then reaches omega * omega_scale, where
 *           omega_scale is its KV spread times the battery voltage ratio: a randomized drone has
 *           a real trim error.
 *    ctbr:  a[0] -> collective thrust, fraction (a0+1)/2 of the nominal maximum thrust;
 *           a[1..3] -> body rates FLU (a * rate_max). A PID rate loop (D on the measured
 *           angular acceleration) with gyroscopic feed-forward and an X mixer on the nominal
 *           model, clipped at the motor limits, runs at physics rate, as a flight
 *           controller's inner loop does.
 * ========================================================================================== */

/* What the flight controller / ESC side knows: the nominal (size-family) drone. */
typedef struct {
    float curve[3], omega_min, omega_max, kf, inv_kf, k_yaw, l, J[3], thrust_max;
} SlNominal;

SL_INLINE void sl_motor_command(const float a[4], const SlNominal *n, float cmd[4]) {
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) {
        float u = 0.5f * (a[m] + 1.f);
        cmd[m] = SL_FMA(u, SL_FMA(u, n->curve[2], n->curve[1]), n->curve[0]);
    }
}

#define SL_RATE_INTEGRAL_LIMIT 1.0f /* rad: anti-windup bound of the rate error integral */

SL_INLINE void sl_ctbr_command(const float a[4], const SlNominal *n, const SlParams *g, const float w[3],
                               float w_prev[3], float integ[3], float dt, float cmd[4]) {
    float thrust = 0.5f * (a[0] + 1.f) * n->thrust_max;
    float alpha[3];
    for (int k = 0; k < 3; k++) {
        float err = a[k + 1] * g->rate_max_rad_s[k] - w[k];
        integ[k] = sl_clamp(integ[k] + err * dt, -SL_RATE_INTEGRAL_LIMIT, SL_RATE_INTEGRAL_LIMIT);
        alpha[k] = g->rate_kp_per_s[k] * err + g->rate_ki_per_s2[k] * integ[k] - g->rate_kd[k] * (w[k] - w_prev[k]) / dt;
        w_prev[k] = w[k];
    }
    /* desired torque = J alpha + w x (J w) */
    float tx = n->J[0] * alpha[0] + (w[1] * n->J[2] * w[2] - w[2] * n->J[1] * w[1]);
    float ty = n->J[1] * alpha[1] + (w[2] * n->J[0] * w[0] - w[0] * n->J[2] * w[2]);
    float tz = n->J[2] * alpha[2] + (w[0] * n->J[1] * w[1] - w[1] * n->J[0] * w[0]);
    /* X mixer: the inverse of the allocation in sl_deriv */
    float t_min = n->kf * n->omega_min * n->omega_min, t_max = n->kf * n->omega_max * n->omega_max;
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) {
        float Tm = 0.25f * thrust + 0.25f * (SL_MY[m] * tx - SL_MX[m] * ty) / n->l - 0.25f * SL_SPIN[m] * tz / n->k_yaw;
        Tm = sl_clamp(Tm, t_min, t_max);
        cmd[m] = sqrtf(Tm * n->inv_kf);
    }
}

/* ============================================================================================
 * 7. The environment: N drones, structure of arrays. All per-drone numbers live in one float
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
    X(task_id, 1) X(radius_m, 1) X(target_enu_m, 3) X(target_vel_enu_m_s, 3)                    \
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
    X(last_task, 1) X(last_gates, 1) X(last_collision, 1)

#define SL_ROW_ENUM(name, w) SL_ROW_##name, SL_ROW_##name##_END = SL_ROW_##name + (w)-1,
enum { SL_DRONE_FLOATS(SL_ROW_ENUM) SL_N_ROWS };
#undef SL_ROW_ENUM

/* Component c of field `name` of drone i; needs F (the block), np (n_pad) and i in scope. */
#define SL_D(name, c) F[(ptrdiff_t)(SL_ROW_##name + (c)) * np + i] /* 64-bit index: affine, so no gathers */

typedef struct {
    int n, n_pad, action_mode, substeps;
    float dt_s, control_dt_s;
    int reference;  /* 1: step physics with the scalar reference (sl_physics_reference), for tests */
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
    float *ring;        /* [delay_mask + 1][4][n_pad] rotor-speed commands */
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
            for (int m = 0; m < 4; m++) ring[(w_slot * 4 + m) * np + i] = cmd[m];
            for (int m = 0; m < 4; m++) target[m] = sl_clamp(ring[(r_slot * 4 + m) * np + i] * SL_D(omega_scale, 0), 0.f, cap);
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
 * the block's drones have (a few), one contiguous load and a select. The caller advances the
 * ring's head once all blocks are done. */
SL_INLINE void sl_physics(SlEnv *e, const int MODE, const int i0, const int i1) {
    SlBlockState B __attribute__((aligned(64)));
    const int nb = (i1 - i0 + SL_LANES - 1) / SL_LANES * SL_LANES; /* whole vectors; padding lanes are resting drones */
    float *restrict ring = e->ring;
    const int np = e->n_pad, S = e->substeps;
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
    for (int k = 0; k < S; k++) {
        const int w_slot = (int)((head + (uint32_t)k) & e->delay_mask);
        float *restrict ring_w = ring + (ptrdiff_t)w_slot * 4 * np + i0;
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
            for (int m = 0; m < 4; m++) ring_w[(ptrdiff_t)m * np + j] = cmd[m];
        }
        /* pure delay: each drone reads the command of delay_steps ago (in its own lane): for the
         * few delays a block has, one contiguous load and a select each; for a wide spread of
         * delays (long randomized ones), a gather */
        float past[4][SL_BLOCK] __attribute__((aligned(64)));
        if (gather)
            for (int m = 0; m < 4; m++)
#pragma GCC ivdep
                for (int j = 0; j < nb; j++)
                    past[m][j] = ring[(ptrdiff_t)((w_slot - (int)B.delay[j]) & mask) * 4 * np + (ptrdiff_t)m * np + i0 + j];
        for (int d = d_lo; d <= d_hi && !gather; d++) {
            const float *restrict slot = ring + (ptrdiff_t)((w_slot - d) & mask) * 4 * np + i0;
            const float fd = (float)d;
            for (int m = 0; m < 4; m++)
#pragma GCC ivdep
                for (int j = 0; j < nb; j++) past[m][j] = d == d_lo || B.delay[j] == fd ? slot[(ptrdiff_t)m * np + j] : past[m][j];
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
 * 8. Observation. sl_observe builds one drone's observation from what a real vehicle has; the
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

/* Writes component k of the observation at out[k * st] (st = 1: one row; st = SL_BLOCK: a column of a block). */
SL_INLINE void sl_observe(const SlObsInput *in, float *restrict out, const int st) {
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
    /* absent slots are all zeros, present flag 0 */
    for (int g = 0; g < SL_OBS_GATES; g++) {
        const float *gate = in->gates[g];
        float present = (float)g < in->n_gates ? 1.f : 0.f, dg[3];
        for (int a = 0; a < 3; a++) dg[a] = gate[a] - in->pos_enu_m[a];
        float sq = present / (1.f + sqrtf(dg[0] * dg[0] + dg[1] * dg[1] + dg[2] * dg[2]));
        float *o = out + (SL_OBS_gates + g * SL_OBS_GATE_SIZE) * st;
        for (int a = 0; a < 3; a++) {
            o[(a) * st] = sq * sl_to_body(R, dg, a);
            o[(3 + a) * st] = present * sl_to_body(R, gate + 3, a);
        }
        o[(6) * st] = present * gate[6];
        o[(7) * st] = present * gate[7];
        o[(8) * st] = present;
    }
    for (int k = 0; k < SL_OBS_OBSTACLES; k++) {
        float present = (float)k < in->n_near ? 1.f : 0.f, dk[3];
        for (int a = 0; a < 3; a++) dk[a] = present * (in->near[k][a] - in->pos_enu_m[a]);
        float *o = out + (SL_OBS_obstacles + k * SL_OBS_OBSTACLE_SIZE) * st;
        for (int a = 0; a < 3; a++) o[(a) * st] = sl_to_body(R, dk, a);
        o[(3) * st] = present * in->near[k][3];
        o[(4) * st] = present;
    }
}

/* Drone i's observation as the sim sees it: the state plus the randomized observation noise,
 * the next gates of its course (race) and what it senses. F / np: the environment's block and
 * row length, or a block's copy of the rows observed (sl_observe_range). */
SL_INLINE void sl_observe_drone(const SlRandomization *r, const float *restrict F, const int np, const int i,
                                uint32_t *rng, float *restrict out, const int st) {
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
    in.n_gates = SL_D(next_gates_count, 0);
    for (int g = 0; g < SL_OBS_GATES; g++)
        for (int c = 0; c < SL_GATE_FLOATS; c++) in.gates[g][c] = SL_D(next_gates, g * SL_GATE_FLOATS + c);
    in.n_near = SL_D(near_count, 0);
    for (int k = 0; k < SL_OBS_OBSTACLES; k++)
        for (int c = 0; c < 4; c++) in.near[k][c] = SL_D(near, k * 4 + c);
    sl_observe(&in, out, st);
}

/* The rows an observation reads, as (first row, count). */
#define SL_OBSERVED_ROWS(X)                                                                          \
    X(pos_enu_m, 3) X(vel_enu_m_s, 3) X(omega_flu_rad_s, 3) X(quat_wxyz, 4) X(target_enu_m, 3)      \
    X(target_vel_enu_m_s, 3) X(action_hist, SL_ACTION_HISTORY * SL_ACTION_SIZE) X(hover_action, 1) \
    X(next_gates_count, 1) X(next_gates, SL_OBS_GATES * SL_GATE_FLOATS) X(near_count, 1)            \
    X(near, SL_OBS_OBSTACLES * 4)

/* One vector of the build's width, for the transposition below. */
typedef float SlVec __attribute__((vector_size(SL_VECTOR_BYTES), may_alias));
typedef float SlVecU __attribute__((vector_size(SL_VECTOR_BYTES), aligned(4), may_alias)); /* unaligned */
typedef int32_t SlVecI __attribute__((vector_size(SL_VECTOR_BYTES)));

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

/* Observe drones i0..i1-1 into e->obs, block by block: the observed rows copied into a block
 * (fixed offsets, contiguous loads), the observations computed across drones into columns
 * (contiguous stores), then transposed SL_LANES x SL_LANES at a time into the rows the policy reads. */
static void sl_observe_range(SlEnv *e, const int i0, const int i1) {
    uint32_t *restrict rngs = e->rng;
    float *restrict obs = e->obs;
    const float *restrict F = e->f;
    const int np = e->n_pad;
    float *restrict Xb = e->block; /* [SL_N_ROWS][SL_BLOCK]; the rows not observed stay unused */
    float T[SL_OBS_SIZE * SL_BLOCK] __attribute__((aligned(64)));
    for (int b0 = i0; b0 < i1; b0 += SL_BLOCK) {
        const int nb = ((i1 - b0 < SL_BLOCK ? i1 - b0 : SL_BLOCK) + SL_LANES - 1) / SL_LANES * SL_LANES;
#define SL_COPY_ROWS(name, w) \
        for (int c = 0; c < (w); c++) sl_copy(Xb + (SL_ROW_##name + c) * SL_BLOCK, F + (ptrdiff_t)(SL_ROW_##name + c) * np + b0, nb);
        SL_OBSERVED_ROWS(SL_COPY_ROWS)
#undef SL_COPY_ROWS
#pragma GCC ivdep
        for (int j = 0; j < nb; j++) {
            uint32_t rng = rngs[b0 + j];
            sl_observe_drone(&e->rnd, Xb, SL_BLOCK, j, &rng, T + j, SL_BLOCK);
            rngs[b0 + j] = rng;
        }
        const int k_vec = SL_OBS_SIZE / SL_LANES * SL_LANES;
        for (int j0 = 0; j0 < nb; j0 += SL_LANES) {
            float *row = obs + (size_t)(b0 + j0) * SL_OBS_SIZE;
            for (int k0 = 0; k0 < k_vec; k0 += SL_LANES) {
                SlVec v[SL_LANES];
                for (int r = 0; r < SL_LANES; r++) v[r] = *(const SlVec *)(T + (k0 + r) * SL_BLOCK + j0);
                sl_transpose(v);
                for (int c = 0; c < SL_LANES; c++) *(SlVecU *)(row + (size_t)c * SL_OBS_SIZE + k0) = v[c];
            }
            for (int c = 0; c < SL_LANES; c++)
                for (int k = k_vec; k < SL_OBS_SIZE; k++) row[(size_t)c * SL_OBS_SIZE + k] = T[k * SL_BLOCK + j0 + c];
        }
    }
}

/* ============================================================================================
 * 9. Domain randomization: draw drone i (size family, then independent noise) from the profile.
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
    } else { /* solve c0 + c1 u + c2 u^2 = omega_hover for u in [0,1] */
        float c0 = SL_D(nom_curve, 0) - omega_hover, c1 = SL_D(nom_curve, 1), c2 = SL_D(nom_curve, 2);
        float u = fabsf(c2) < 1e-9f * fabsf(c1) ? -c0 / c1 : (-c1 + sqrtf(sl_max(c1 * c1 - 4.f * c2 * c0, 0.f))) / (2.f * c2);
        hover = 2.f * u - 1.f;
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
            e->ring[(slot * 4 + m) * np + i] = SL_D(rotor_rad_s, m) / SL_D(omega_scale, 0);
    }
    for (int c = 0; c < 3; c++) { SL_D(rate_integral, c) = 0.f; SL_D(rate_prev, c) = SL_D(omega_flu_rad_s, c); }
    SL_D(crashed, 0) = 0.f;
}

/* ============================================================================================
 * 10. Worlds and sensing. A space is a box (|x| <= bx, |y| <= by, 0 <= z <= bz) that holds a
 *     course of gates, a field of sphere obstacles and a formation's slots. With
 *     drones_per_space = 1 every drone has its own world, drawn anew for each episode's task;
 *     with more, the drones of a space share one world (drawn at reset) and are obstacles to
 *     each other. Collisions are checked once per control step.
 * ========================================================================================== */
#define SL_PI 3.14159265f

SL_INLINE float sl_norm3(const float v[3]) { return sqrtf(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]); }
SL_INLINE float sl_dist3(const float *a, const float *b) {
    float d[3] = {a[0] - b[0], a[1] - b[1], a[2] - b[2]};
    return sl_norm3(d);
}

/* A vertical gate at centre c, flown through towards yaw (counter-clockwise from east). */
static void sl_set_gate(float *g, const float c[3], float yaw_rad, float width_m, float height_m) {
    for (int a = 0; a < 3; a++) g[a] = c[a];
    g[3] = cosf(yaw_rad); g[4] = sinf(yaw_rad); g[5] = 0.f;
    g[6] = 0.5f * width_m; g[7] = 0.5f * height_m;
}

/* The box inside the bounds that keeps `margin` from every wall, floor and ceiling. */
static void sl_inner_box(const SlTaskConfig *t, float margin, float lo[3], float hi[3]) {
    for (int a = 0; a < 3; a++) {
        lo[a] = (a == 2 ? 0.f : -t->bounds_m[a]) + margin;
        hi[a] = t->bounds_m[a] - margin;
        if (lo[a] > hi[a]) lo[a] = hi[a] = 0.5f * (lo[a] + hi[a]);
    }
}

/* A random course: each gate a feasible hop (gate_spacing_m_range) from the previous one, turned
 * at most about 70 degrees, facing along the hop, inside the bounds. Returns the number of gates. */
static int sl_random_course(const SlTaskConfig *t, uint32_t *rng, float size_m, float *gates) {
    int n = (int)sl_uniform_in(rng, t->gate_count_range[0], t->gate_count_range[1] + 0.999f);
    n = n < 1 ? 1 : n > SL_MAX_GATES ? SL_MAX_GATES : n;
    float lo[3], hi[3], c[3];
    sl_inner_box(t, 0.5f * size_m + t->gate_frame_m + 0.5f, lo, hi);
    for (int a = 0; a < 3; a++) c[a] = sl_uniform_in(rng, lo[a], hi[a]);
    float yaw = sl_uniform_in(rng, -SL_PI, SL_PI);
    sl_set_gate(gates, c, yaw, size_m, size_m);
    for (int k = 1; k < n; k++) {
        float cand[3] = {0.f, 0.f, 0.f};
        int ok = 0;
        for (int attempt = 0; attempt < 24 && !ok; attempt++) {
            float dir = yaw + (attempt < 16 ? sl_uniform_in(rng, -1.2f, 1.2f) : sl_uniform_in(rng, -SL_PI, SL_PI));
            float hop = sl_uniform_in(rng, t->gate_spacing_m_range[0], t->gate_spacing_m_range[1]);
            cand[0] = c[0] + hop * cosf(dir);
            cand[1] = c[1] + hop * sinf(dir);
            cand[2] = sl_uniform_in(rng, sl_max(lo[2], c[2] - 1.5f), sl_min(hi[2], c[2] + 1.5f));
            ok = 1;
            for (int a = 0; a < 3; a++) ok &= cand[a] >= lo[a] && cand[a] <= hi[a];
            for (int j = 0; j < k && ok; j++) ok = sl_dist3(cand, gates + j * SL_GATE_FLOATS) >= 0.7f * t->gate_spacing_m_range[0];
        }
        if (!ok) { /* boxed in: hop towards the middle of the box */
            float to[3] = {-c[0], -c[1], 0.f}, len = sl_max(sl_norm3(to), 1e-6f);
            for (int a = 0; a < 2; a++) cand[a] = sl_clamp(c[a] + to[a] / len * t->gate_spacing_m_range[0], lo[a], hi[a]);
            cand[2] = c[2];
        }
        yaw = atan2f(cand[1] - c[1], cand[0] - c[0]) + sl_uniform_in(rng, -0.3f, 0.3f);
        sl_set_gate(gates + k * SL_GATE_FLOATS, cand, yaw, size_m, size_m);
        for (int a = 0; a < 3; a++) c[a] = cand[a];
    }
    return n;
}

/* Is point p (a drone of radius r, plus clearance) free of the space's spheres and gates? */
static int sl_clear_of_world(const SlEnv *e, int space, const float p[3], float r) {
    const float *obs = e->obstacles + (size_t)space * SL_MAX_OBSTACLES * 4;
    for (int k = 0; k < e->n_obstacles[space]; k++)
        if (sl_dist3(p, obs + 4 * k) < obs[4 * k + 3] + r) return 0;
    const float *g = e->gates + (size_t)space * SL_MAX_GATES * SL_GATE_FLOATS;
    for (int k = 0; k < e->n_gates[space]; k++, g += SL_GATE_FLOATS)
        if (sl_dist3(p, g) < sl_max(g[6], g[7]) + e->task.gate_frame_m + r) return 0;
    return 1;
}

/* Spheres placed in the space: uniformly (a shared space), or scattered about the segment
 * start -> goal (an obstacles episode), never on the start, the goal, a gate or a slot. */
static void sl_obstacle_field(SlEnv *e, int space, uint32_t *rng, const float *start, const float *goal, float clear_m) {
    const SlTaskConfig *t = &e->task;
    float *obs = e->obstacles + (size_t)space * SL_MAX_OBSTACLES * 4, lo[3], hi[3];
    sl_inner_box(t, 0.f, lo, hi);
    e->n_obstacles[space] = 0;
    for (int k = 0, placed = 0; k < (int)t->obstacle_count; k++) {
        for (int attempt = 0; attempt < 12; attempt++) {
            float p[3], r = sl_uniform_in(rng, t->obstacle_radius_m_range[0], t->obstacle_radius_m_range[1]);
            if (start) {
                float s = sl_uniform_in(rng, 0.2f, 0.8f);
                for (int a = 0; a < 3; a++) p[a] = start[a] + s * (goal[a] - start[a]) + (a == 2 ? 0.3f : 0.7f) * sl_normalish(rng);
            } else {
                for (int a = 0; a < 3; a++) p[a] = sl_uniform_in(rng, lo[a], hi[a]);
            }
            int ok = sl_clear_of_world(e, space, p, r + clear_m);
            if (start) ok &= sl_dist3(p, start) > r + clear_m && sl_dist3(p, goal) > r + clear_m;
            const float *slot = e->formation + (size_t)space * e->space_size * 3;   /* keep formation slots free */
            const int slots = start || e->task.task_prob[SL_TASK_formation] <= 0.f ? 0 : e->space_size;
            for (int j = 0; j < slots && ok; j++) ok = sl_dist3(p, slot + 3 * j) > r + clear_m;
            if (ok) {
                for (int a = 0; a < 3; a++) obs[4 * placed + a] = p[a];
                obs[4 * placed + 3] = r;
                e->n_obstacles[space] = ++placed;
                break;
            }
        }
    }
}

/* Formation slots of a space: a horizontal grid, a sphere or a waving flag (a vertical sheet),
 * spacing_m apart, about `centre`, kept inside the bounds. */
static void sl_formation(const SlTaskConfig *t, uint32_t *rng, int n, const float centre[3], float *slots) {
    const int shape = (int)sl_uniform_in(rng, 0.f, 2.999f);
    const float sp = t->formation_spacing_m;
    float lo[3], hi[3];
    sl_inner_box(t, 0.5f, lo, hi);
    const int side = (int)ceilf(sqrtf((float)n)), cols = (int)ceilf(sqrtf(1.5f * (float)n)), rows = (n + cols - 1) / cols;
    const float big_r = sp * sqrtf((float)n / (4.f * SL_PI));
    for (int k = 0; k < n; k++) {
        float o[3];
        if (shape == 0) {        /* grid */
            o[0] = ((float)(k % side) - 0.5f * (float)(side - 1)) * sp;
            o[1] = ((float)(k / side) - 0.5f * (float)((n + side - 1) / side - 1)) * sp;
            o[2] = 0.f;
        } else if (shape == 1) { /* sphere: a Fibonacci lattice */
            float z = n > 1 ? 1.f - 2.f * ((float)k + 0.5f) / (float)n : 0.f, rr = sqrtf(sl_max(1.f - z * z, 0.f));
            float phi = 2.3999632f * (float)k;
            o[0] = big_r * rr * cosf(phi); o[1] = big_r * rr * sinf(phi); o[2] = big_r * z;
        } else {                 /* flag: columns along x, rows along z, a wave along y */
            int col = k % cols, row = k / cols;
            o[0] = ((float)col - 0.5f * (float)(cols - 1)) * sp;
            o[1] = 0.25f * sp * sinf(1.2f * (float)col);
            o[2] = (0.5f * (float)(rows - 1) - (float)row) * sp;
        }
        for (int a = 0; a < 3; a++) slots[3 * k + a] = sl_clamp(centre[a] + o[a], lo[a], hi[a]);
    }
}

SL_INLINE int sl_finite(float x) { return fabsf(x) <= 3.4028235e38f; } /* false for NaN and infinities */

/* Might a and b be closer than reach? A cheap test before the exact distance (squared, with a
 * margin for rounding, so it never rejects a pair the exact test would keep). */
SL_INLINE int sl_within(const float *a, const float *b, float reach) {
    float d0 = a[0] - b[0], d1 = a[1] - b[1], d2 = a[2] - b[2], r = reach * 1.0001f + 1e-6f;
    return !(d0 * d0 + d1 * d1 + d2 * d2 > r * r);
}

/* Keeps the M nearest (distance, id) pairs, sorted; ties broken by id, so the order in which
 * candidates are visited does not matter. */
SL_INLINE void sl_keep_nearest(float *dist, int *id, int *count, float d, int j) {
    int k = *count < SL_OBS_OBSTACLES ? (*count)++ : SL_OBS_OBSTACLES;
    if (k == SL_OBS_OBSTACLES && !(d < dist[k - 1] || (d == dist[k - 1] && j < id[k - 1]))) return;
    if (k == SL_OBS_OBSTACLES) k--;
    while (k > 0 && (d < dist[k - 1] || (d == dist[k - 1] && j < id[k - 1]))) {
        dist[k] = dist[k - 1]; id[k] = id[k - 1]; k--;
    }
    dist[k] = d; id[k] = j;
}

/* Drone-drone neighbours of n drones (positions [n][3], radii [n]): for each drone, whether it
 * touches another (surface distance below zero) and its nearest M others closer than sense_m
 * (surface to surface): nearest [n][M] ids (-1: none) and their distances. A uniform grid of
 * cells no smaller than the query reach keeps this O(n); use_grid = 0 checks all pairs (the
 * reference the tests compare with). Returns 0, or -1 when out of memory. */
int sl_neighbors(int n, const float *pos, const float *radius, float sense_m, int use_grid, uint8_t *collided,
                 int *nearest, float *nearest_dist) {
    float r_max = 0.f, lo[3] = {1e30f, 1e30f, 1e30f}, hi[3] = {-1e30f, -1e30f, -1e30f};
    for (int i = 0; i < n; i++) {
        r_max = sl_max(r_max, radius[i]);
        for (int a = 0; a < 3; a++) {
            float x = sl_finite(pos[3 * i + a]) ? pos[3 * i + a] : 0.f; /* a NaN or infinite drone goes to a corner */
            lo[a] = sl_min(lo[a], x); hi[a] = sl_max(hi[a], x);
        }
    }
    float cell = sl_max(sense_m + 2.f * r_max, 1e-3f);
    int dim[3] = {1, 1, 1}, cells = 1, *start = NULL, *order = NULL, *cell_of = NULL;
    float *sorted = NULL; /* [n][4]: position and radius, in cell order */
    if (use_grid && n > 1) {
        /* sized in double: the extent of finite floats can overflow a float, the cell count an int;
         * the cell grows until the grid is small, which it is once the cell exceeds the extent */
        double cell_d = sl_finite(cell) ? (double)cell : 1e39;
        for (;;) {
            double count = 1.0;
            for (int a = 0; a < 3; a++) {
                double d = floor(((double)hi[a] - (double)lo[a]) / cell_d) + 1.0;
                dim[a] = (int)(d < 1e6 ? d : 1e6);
                count *= (double)dim[a];
            }
            if (count <= 8.0 * n + 64.0) break;
            cell_d *= 1.5;
        }
        cell = (float)cell_d;
        cells = dim[0] * dim[1] * dim[2];
        start = (int *)calloc((size_t)cells + 1, sizeof(int));
        order = (int *)malloc((size_t)n * sizeof(int));
        cell_of = (int *)malloc((size_t)n * sizeof(int));
        sorted = (float *)malloc((size_t)n * 4 * sizeof(float));
        if (!start || !order || !cell_of || !sorted) { free(start); free(order); free(cell_of); free(sorted); return -1; }
        for (int i = 0; i < n; i++) { /* counting sort of the drones by cell */
            int c[3];
            for (int a = 0; a < 3; a++) {
                float x = sl_finite(pos[3 * i + a]) ? pos[3 * i + a] : 0.f;
                c[a] = (int)sl_clamp((x - lo[a]) / cell, 0.f, (float)(dim[a] - 1));
            }
            cell_of[i] = (c[2] * dim[1] + c[1]) * dim[0] + c[0];
            start[cell_of[i] + 1]++;
        }
        for (int c = 0; c < cells; c++) start[c + 1] += start[c];
        int *fill = (int *)malloc((size_t)cells * sizeof(int));
        if (!fill) { free(start); free(order); free(cell_of); free(sorted); return -1; }
        memcpy(fill, start, (size_t)cells * sizeof(int));
        for (int i = 0; i < n; i++) order[fill[cell_of[i]]++] = i;
        free(fill);
        /* positions and radii in cell order: the candidates of a row of cells lie side by side */
        for (int k = 0; k < n; k++) {
            for (int a = 0; a < 3; a++) sorted[4 * k + a] = pos[3 * order[k] + a];
            sorted[4 * k + 3] = radius[order[k]];
        }
    }
    for (int i = 0; i < n; i++) {
        float dist[SL_OBS_OBSTACLES];
        int id[SL_OBS_OBSTACLES], count = 0, touch = 0;
        const float *p = pos + 3 * i;
        if (start) {
            int c = cell_of[i], cx = c % dim[0], cy = (c / dim[0]) % dim[1], cz = c / (dim[0] * dim[1]);
            const int x0 = cx > 0 ? cx - 1 : 0, x1 = cx + 1 < dim[0] ? cx + 1 : dim[0] - 1;
            for (int z = cz - 1; z <= cz + 1; z++)
                for (int y = cy - 1; y <= cy + 1; y++) {
                    if (y < 0 || z < 0 || y >= dim[1] || z >= dim[2]) continue;
                    const int row = (z * dim[1] + y) * dim[0]; /* cells x0..x1 of this row: one range */
                    for (int k = start[row + x0]; k < start[row + x1 + 1]; k++) {
                        const float *q = sorted + 4 * k;
                        if (!sl_within(p, q, sense_m + radius[i] + q[3])) continue;
                        const int j = order[k];
                        if (j == i) continue;
                        float d = sl_dist3(p, q) - radius[i] - radius[j];
                        touch |= d < 0.f;
                        if (d < sense_m) sl_keep_nearest(dist, id, &count, d, j);
                    }
                }
        } else {
            for (int j = 0; j < n; j++) {
                if (j == i) continue;
                float d = sl_dist3(p, pos + 3 * j) - radius[i] - radius[j];
                touch |= d < 0.f;
                if (d < sense_m) sl_keep_nearest(dist, id, &count, d, j);
            }
        }
        collided[i] = (uint8_t)touch;
        for (int k = 0; k < SL_OBS_OBSTACLES; k++) {
            nearest[i * SL_OBS_OBSTACLES + k] = k < count ? id[k] : -1;
            nearest_dist[i * SL_OBS_OBSTACLES + k] = k < count ? dist[k] : 0.f;
        }
    }
    free(start); free(order); free(cell_of); free(sorted);
    return 0;
}

/* Drone i's senses, given its nearest other drones (ids within its space, from sl_neighbors;
 * count may be 0): adds the space's spheres, keeps the M nearest (drones and spheres alike) and
 * sets `collided` on touching any of them. */
static void sl_sense_finish(SlEnv *e, int i, float *dist, int *id, int count, int touch) {
    float *F = e->f;
    const int np = e->n_pad, space = i / e->space_size, first = space * e->space_size;
    const float p[3] = {SL_D(pos_enu_m, 0), SL_D(pos_enu_m, 1), SL_D(pos_enu_m, 2)}, r = SL_D(radius_m, 0);
    const float *obs = e->obstacles + (size_t)space * SL_MAX_OBSTACLES * 4;
    for (int k = 0; k < e->n_obstacles[space]; k++) {
        float d = sl_dist3(p, obs + 4 * k) - obs[4 * k + 3] - r;
        touch |= d < 0.f;
        if (d < e->task.sense_range_m) sl_keep_nearest(dist, id, &count, d, e->space_size + k);
    }
    for (int k = 0; k < SL_OBS_OBSTACLES; k++) {
        const int j = k < count ? id[k] : 0;
        for (int a = 0; a < 4; a++) {
            float v = 0.f;
            if (k < count && j < e->space_size) { /* another drone */
                const int i_other = first + j;
                v = a < 3 ? F[(ptrdiff_t)(SL_ROW_pos_enu_m + a) * np + i_other] : F[(ptrdiff_t)SL_ROW_radius_m * np + i_other];
            } else if (k < count) {
                v = obs[4 * (j - e->space_size) + a];
            }
            SL_D(near, 4 * k + a) = v;
        }
    }
    SL_D(near_count, 0) = (float)count;
    SL_D(collided, 0) = (float)touch;
}

/* Drone i's senses by itself (after its reset, or in a world of its own): all pairs in its space. */
static void sl_sense_one(SlEnv *e, int i) {
    float *F = e->f;
    const int np = e->n_pad, first = i / e->space_size * e->space_size;
    if (e->space_size == 1 && e->n_obstacles[first] == 0) { /* an empty world of its own: nothing to sense */
        SL_D(near_count, 0) = SL_D(collided, 0) = 0.f;
        return;
    }
    float dist[SL_OBS_OBSTACLES], p[3] = {SL_D(pos_enu_m, 0), SL_D(pos_enu_m, 1), SL_D(pos_enu_m, 2)};
    int id[SL_OBS_OBSTACLES], count = 0, touch = 0;
    for (int j = 0; j < e->space_size; j++) {
        const int o = first + j;
        if (o == i || o >= e->n) continue;
        float q[3] = {F[(ptrdiff_t)SL_ROW_pos_enu_m * np + o], F[(ptrdiff_t)(SL_ROW_pos_enu_m + 1) * np + o],
                      F[(ptrdiff_t)(SL_ROW_pos_enu_m + 2) * np + o]};
        float d = sl_dist3(p, q) - SL_D(radius_m, 0) - F[(ptrdiff_t)SL_ROW_radius_m * np + o];
        touch |= d < 0.f;
        if (d < e->task.sense_range_m) sl_keep_nearest(dist, id, &count, d, j);
    }
    sl_sense_finish(e, i, dist, id, count, touch);
}

/* Every drone of every shared space senses, through the grid. Returns -1 when out of memory. */
static int sl_sense_spaces(SlEnv *e) {
    const int S = e->space_size, np = e->n_pad;
    float *pos = (float *)malloc((size_t)S * 4 * sizeof(float)), *radius = pos + 3 * S;
    float *nd = (float *)malloc((size_t)S * SL_OBS_OBSTACLES * sizeof(float));
    int *ni = (int *)malloc((size_t)S * SL_OBS_OBSTACLES * sizeof(int));
    uint8_t *hit = (uint8_t *)malloc((size_t)S);
    int status = pos && nd && ni && hit ? 0 : -1;
    for (int space = 0; space < e->n_spaces && status == 0; space++) {
        const int first = space * S, n = e->n - first < S ? e->n - first : S;
        for (int j = 0; j < n; j++) {
            for (int a = 0; a < 3; a++) pos[3 * j + a] = e->f[(ptrdiff_t)(SL_ROW_pos_enu_m + a) * np + first + j];
            radius[j] = e->f[(ptrdiff_t)SL_ROW_radius_m * np + first + j];
        }
        status = sl_neighbors(n, pos, radius, e->task.sense_range_m, 1, hit, ni, nd);
        for (int j = 0; j < n && status == 0; j++) {
            int count = 0;
            while (count < SL_OBS_OBSTACLES && ni[j * SL_OBS_OBSTACLES + count] >= 0) count++;
            sl_sense_finish(e, first + j, nd + j * SL_OBS_OBSTACLES, ni + j * SL_OBS_OBSTACLES, count, hit[j]);
        }
    }
    free(pos); free(nd); free(ni); free(hit);
    return status;
}

/* Draws the world of a shared space (at reset): its course, formation and sphere field. */
static void sl_draw_space(SlEnv *e, int space) {
    const SlTaskConfig *t = &e->task;
    uint32_t *rng = &e->space_rng[space];
    float *gates = e->gates + (size_t)space * SL_MAX_GATES * SL_GATE_FLOATS;
    e->n_gates[space] = e->n_obstacles[space] = 0;
    if (e->course_n > 0) {
        memcpy(gates, e->course, sizeof e->course);
        e->n_gates[space] = e->course_n;
    } else if (t->task_prob[SL_TASK_race] > 0.f) {
        const float arm_max_m = e->rnd.arm_m_range[1] > 0.f ? e->rnd.arm_m_range[1] : e->nominal.arm_m; /* room for the largest */
        e->n_gates[space] = sl_random_course(t, rng, t->gate_size_m + 4.f * arm_max_m, gates);
    }
    const float centre[3] = {0.f, 0.f, 0.5f * t->bounds_m[2]};
    if (t->task_prob[SL_TASK_formation] > 0.f)
        sl_formation(t, rng, e->space_size, centre, e->formation + (size_t)space * e->space_size * 3);
    if (t->task_prob[SL_TASK_obstacles] > 0.f) sl_obstacle_field(e, space, rng, NULL, NULL, 1.f);
}

/* ============================================================================================
 * 11. The tasks: reset (task draw, world, start, target), reward, termination, statistics.
 * ========================================================================================== */

/* Copies the next gates a racing drone is to pass (wrapping around for the next lap) into its
 * own fields, for the observation; none for the other tasks. */
static void sl_load_next_gates(SlEnv *e, int i) {
    float *F = e->f;
    const int np = e->n_pad, space = i / e->space_size, ng = e->n_gates[space];
    const float left = SL_D(task_id, 0) == (float)SL_TASK_race && ng > 0 ? SL_D(gates_to_pass, 0) - SL_D(gates_passed, 0) : 0.f;
    SL_D(next_gates_count, 0) = sl_clamp(left, 0.f, (float)SL_OBS_GATES);
    for (int g = 0; g < SL_OBS_GATES; g++) {
        const int idx = ng > 0 ? ((int)SL_D(next_gate, 0) + g) % ng : 0;
        for (int c = 0; c < SL_GATE_FLOATS; c++)
            SL_D(next_gates, g * SL_GATE_FLOATS + c) = ng > 0 ? e->gates[((size_t)space * SL_MAX_GATES + idx) * SL_GATE_FLOATS + c] : 0.f;
    }
}

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
            float back = sl_uniform_in(rng, 1.5f, 3.f), side = sl_uniform_in(rng, -0.5f, 0.5f) * gate[6];
            p[0] = sl_clamp(gate[0] - back * gate[3] - side * gate[4], lo[0], hi[0]);
            p[1] = sl_clamp(gate[1] - back * gate[4] + side * gate[3], lo[1], hi[1]);
            p[2] = sl_clamp(gate[2] + sl_uniform_in(rng, -0.5f, 0.5f) * gate[7], lo[2], hi[2]);
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

static void sl_reset_drone(SlEnv *e, int i) {
    const SlTaskConfig *t = &e->task;
    float *F = e->f;
    const int np = e->n_pad, space = i / e->space_size;
    uint32_t *rng = &e->rng[i];
    sl_randomize_drone(e, i);
    sl_derive_drone(e, i);
    const int task = sl_draw_task(e, rng);
    SL_D(task_id, 0) = (float)task;
    float *gates = e->gates + (size_t)space * SL_MAX_GATES * SL_GATE_FLOATS;

    /* a world of its own: only what this task needs */
    if (e->space_size == 1) {
        e->n_gates[space] = e->n_obstacles[space] = 0;
        if (task == SL_TASK_race && e->course_n > 0) {
            memcpy(gates, e->course, sizeof e->course);
            e->n_gates[space] = e->course_n;
        } else if (task == SL_TASK_race) {
            e->n_gates[space] = sl_random_course(t, rng, t->gate_size_m + 4.f * SL_D(arm_m, 0), gates);
        }
    }

    float margin = sl_min(1.f, 0.25f * t->bounds_m[2]);
    float lo[3], hi[3], p[3], yaw = sl_uniform_in(rng, -SL_PI, SL_PI);
    sl_inner_box(t, margin, lo, hi);
    lo[2] = margin; /* the floor margin */
    int on_ground = task != SL_TASK_race && sl_uniform(rng) < t->ground_start_prob;
    int first_gate = 0;
    if (task == SL_TASK_race && e->n_gates[space] > 0) {
        /* in the air before a gate, facing it: the first of a random course of its own, else any */
        first_gate = e->course_n > 0 || e->space_size > 1 ? (int)sl_uniform_in(rng, 0.f, (float)e->n_gates[space] - 0.001f) : 0;
        const float *g = gates + first_gate * SL_GATE_FLOATS;
        sl_free_start(e, i, rng, lo, hi, 0, g, p);
        yaw = atan2f(g[4], g[3]) + sl_uniform_in(rng, -0.3f, 0.3f);
    } else {
        sl_free_start(e, i, rng, lo, hi, on_ground, NULL, p);
    }
    /* random attitude: yaw, then a tilt up to init_tilt_max about a random horizontal axis */
    float tilt = on_ground ? 0.f : t->init_tilt_max_rad * sl_uniform(rng);
    float axis = sl_uniform_in(rng, -SL_PI, SL_PI);
    float cy = cosf(0.5f * yaw), sy = sinf(0.5f * yaw), ct = cosf(0.5f * tilt), st = sinf(0.5f * tilt);
    float ax = cosf(axis), ay = sinf(axis);
    float q[4] = {ct * cy, st * ax * cy + st * ay * sy, st * ay * cy - st * ax * sy, ct * sy}; /* q_tilt * q_yaw */
    float omega_hover = sqrtf(SL_D(mass_kg, 0) * SL_GRAVITY_M_S2 / (4.f * SL_D(kf_n_per_rad2s2, 0)));
    for (int a = 0; a < 3; a++) {
        SL_D(pos_enu_m, a) = SL_D(prev_pos_enu_m, a) = p[a];
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

    /* the target: c + A sin(W t + phase); A = 0 for a fixed point */
    float c[3] = {0.f, 0.f, 0.f}, amp[3] = {0.f, 0.f, 0.f}, w[3] = {0.f, 0.f, 0.f}, phase[3] = {0.f, 0.f, 0.f};
    SL_D(episode_s, 0) = t->episode_s;
    SL_D(next_gate, 0) = (float)first_gate;
    SL_D(gates_passed, 0) = 0.f;
    SL_D(gates_to_pass, 0) = task == SL_TASK_race ? (float)e->n_gates[space] * t->race_laps : 0.f;
    if (task == SL_TASK_race && e->n_gates[space] > 0) {
        for (int a = 0; a < 3; a++) c[a] = gates[first_gate * SL_GATE_FLOATS + a];
        SL_D(episode_s, 0) = SL_D(gates_to_pass, 0) * t->race_time_per_gate_s;
    } else if (task == SL_TASK_orbit) {  /* a circle of radius R about a point, at speed v */
        float room = sl_max(sl_min(hi[0] - lo[0], hi[1] - lo[1]) * 0.5f, 0.1f);
        float radius = sl_min(sl_uniform_in(rng, t->orbit_radius_m_range[0], t->orbit_radius_m_range[1]), room);
        float speed = sl_uniform_in(rng, t->orbit_speed_m_s_range[0], t->orbit_speed_m_s_range[1]);
        float spin = sl_uniform(rng) < 0.5f ? -1.f : 1.f, phi = sl_uniform_in(rng, -SL_PI, SL_PI);
        c[0] = sl_uniform_in(rng, lo[0] + radius, hi[0] - radius);
        c[1] = sl_uniform_in(rng, lo[1] + radius, hi[1] - radius);
        c[2] = sl_uniform_in(rng, lo[2], hi[2]);
        amp[0] = amp[1] = radius;
        w[0] = w[1] = spin * speed / radius;
        phase[0] = phi + 0.5f * SL_PI; /* x = cx + R cos(w t + phi), y = cy + R sin(w t + phi) */
        phase[1] = phi;
    } else if (task == SL_TASK_follow) { /* a smooth wandering point (a Lissajous curve), at most follow_speed */
        for (int a = 0; a < 3; a++) {
            float half = 0.5f * (hi[a] - lo[a]);
            c[a] = 0.5f * (hi[a] + lo[a]);
            amp[a] = half * sl_uniform_in(rng, 0.3f, 1.f);
            w[a] = amp[a] > 0.05f ? sl_uniform_in(rng, 0.5f, 1.f) * t->follow_speed_m_s_max / (amp[a] * 1.7320508f) : 0.f;
            phase[a] = sl_uniform_in(rng, -SL_PI, SL_PI);
        }
    } else if (task == SL_TASK_formation) {
        if (e->space_size == 1) { /* alone: a slot anywhere in the box */
            float centre[3];
            for (int a = 0; a < 3; a++) centre[a] = sl_uniform_in(rng, lo[a], hi[a]);
            sl_formation(t, rng, 1, centre, e->formation + (size_t)space * 3);
        }
        for (int a = 0; a < 3; a++) c[a] = e->formation[((size_t)space * e->space_size + i % e->space_size) * 3 + a];
    } else { /* hover / go-to, and obstacles: a fixed goal at a random distance, inside the box */
        const float *range = task == SL_TASK_obstacles ? t->obstacle_goal_dist_m_range : t->target_dist_m_range;
        for (int attempt = 0; attempt < 8; attempt++) {
            float dist = sl_uniform_in(rng, range[0], range[1]);
            float dir[3] = {sl_normalish(rng), sl_normalish(rng), (task == SL_TASK_obstacles ? 0.3f : 1.f) * sl_normalish(rng)};
            float dn = 1.f / sl_max(sl_norm3(dir), 1e-6f);
            for (int a = 0; a < 3; a++) c[a] = sl_clamp(p[a] + dist * dir[a] * dn, lo[a], hi[a]);
            c[2] = sl_max(c[2], margin);
            if (sl_clear_of_world(e, space, c, SL_D(radius_m, 0) + 0.3f)) break;
        }
        if (task == SL_TASK_obstacles && e->space_size == 1) sl_obstacle_field(e, space, rng, p, c, SL_D(radius_m, 0) + 0.3f);
    }
    for (int a = 0; a < 3; a++) {
        SL_D(move_centre_enu_m, a) = c[a]; SL_D(move_amp_m, a) = amp[a];
        SL_D(move_w_rad_s, a) = w[a]; SL_D(move_phase_rad, a) = phase[a];
    }
    sl_target_at(F, np, i, 0.f);
    float d0[3] = {SL_D(target_enu_m, 0) - p[0], SL_D(target_enu_m, 1) - p[1], SL_D(target_enu_m, 2) - p[2]};
    SL_D(prev_dist_m, 0) = sl_norm3(d0);
    SL_D(time_s, 0) = SL_D(hold_s, 0) = SL_D(track_s, 0) = SL_D(ep_return, 0) = SL_D(ep_success, 0) = 0.f;
    SL_D(collided, 0) = 0.f;
    SL_D(time_to_target_s, 0) = -1.f;
    sl_load_next_gates(e, i);
}

/* What the path p0 -> p1 (one control step, a drone of radius r) did at a gate: +1 passed
 * through the opening in the flight direction, -1 hit the frame or went through backwards,
 * 0 nothing (it did not cross the gate's plane within the frame). */
SL_INLINE int sl_gate_event(const float *g, const float p0[3], const float p1[3], float r, float frame_m) {
    float s0 = 0.f, s1 = 0.f;
    for (int a = 0; a < 3; a++) { s0 += (p0[a] - g[a]) * g[3 + a]; s1 += (p1[a] - g[a]) * g[3 + a]; }
    int forward = s0 < 0.f && s1 >= 0.f, backward = s0 >= 0.f && s1 < 0.f;
    if (!forward && !backward) return 0;
    float f = s0 / (s0 - s1), off[3];
    for (int a = 0; a < 3; a++) off[a] = p0[a] + f * (p1[a] - p0[a]) - g[a];
    float u = fabsf(-g[4] * off[0] + g[3] * off[1]), v = fabsf(off[2]);
    int in_opening = u <= g[6] - r && v <= g[7] - r;
    int in_frame = u <= g[6] + frame_m + r && v <= g[7] + frame_m + r;
    if (!in_frame) return 0;
    return forward && in_opening ? 1 : -1;
}

/* Rewards, terminations and the running episode statistics of drones i0..i1-1, after the
 * physics and sensing. The caller resets the drones whose episode ended. Three passes: the
 * events only some drones have (a moving target, gates), then the reward loop, which has no
 * branches and vectorizes across drones, then the races whose next gate was passed. */
static void sl_task(SlEnv *e, const int i0, const int i1) {
    const SlTaskConfig t = e->task;
    float *restrict F = e->f;
    const float *restrict actions = e->actions;
    float *restrict rewards = e->rewards;
    uint8_t *restrict terminals = e->terminals, *restrict truncations = e->truncations;
    const int np = e->n_pad;
    const float dt = e->control_dt_s;
    for (int i = i0; i < i1; i++) {
        const int task = (int)SL_D(task_id, 0), space = i / e->space_size;
        if (task == SL_TASK_orbit || task == SL_TASK_follow) sl_target_at(F, np, i, SL_D(time_s, 0) + dt);
        /* gates: any frame is solid; the next gate of a race is passed forwards only */
        float event = 0.f;
        const float *gates = e->gates + (size_t)space * SL_MAX_GATES * SL_GATE_FLOATS;
        const float p0[3] = {SL_D(prev_pos_enu_m, 0), SL_D(prev_pos_enu_m, 1), SL_D(prev_pos_enu_m, 2)};
        const float p1[3] = {SL_D(pos_enu_m, 0), SL_D(pos_enu_m, 1), SL_D(pos_enu_m, 2)};
        const int next = task == SL_TASK_race ? (int)SL_D(next_gate, 0) : -1;
        for (int k = 0; k < e->n_gates[space]; k++) {
            int ev = sl_gate_event(gates + k * SL_GATE_FLOATS, p0, p1, SL_D(radius_m, 0), t.gate_frame_m);
            if (k == next && ev > 0) event = event < 0.f ? event : 1.f;
            else if (ev < 0 || (k == next && ev != 0)) event = -1.f;
        }
        SL_D(gate_event, 0) = event;
    }
#pragma GCC ivdep
    for (int i = i0; i < i1; i++) {
        const float task = SL_D(task_id, 0);
        const float race = task == (float)SL_TASK_race ? 1.f : 0.f;
        const float moving = task == (float)SL_TASK_orbit || task == (float)SL_TASK_follow ? 1.f : 0.f;
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
            float diff = actions[i * 4 + m] - SL_D(action_hist, m);
            da2 += diff * diff;
        }
        float dist = sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
        /* Flags are floats 0 / 1 and every load happens before the selects: no branches. */
        float out = (fabsf(SL_D(pos_enu_m, 0)) > t.bounds_m[0]) | (fabsf(SL_D(pos_enu_m, 1)) > t.bounds_m[1]) |
                    (SL_D(pos_enu_m, 2) > t.bounds_m[2]) ? 1.f : 0.f;
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
                  dt * t.reward_action_change_per_s * da2 + passed * t.reward_gate;
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
        for (int m = 0; m < 4; m++) SL_D(action_hist, m) = actions[i * 4 + m];
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

/* Writes the record of drone i's finished episode. */
static void sl_record_episode(SlEnv *e, int i) {
    float *F = e->f;
    const int np = e->n_pad;
    SL_D(last_return, 0) = SL_D(ep_return, 0);
    SL_D(last_length_s, 0) = SL_D(time_s, 0);
    SL_D(last_success, 0) = SL_D(ep_success, 0);
    SL_D(last_crash, 0) = (float)e->terminals[i] * (SL_D(ep_success, 0) > 0.f && (e->task.end_on_success > 0.f || SL_D(task_id, 0) == (float)SL_TASK_race) ? 0.f : 1.f);
    SL_D(last_time_to_target_s, 0) = SL_D(time_to_target_s, 0);
    SL_D(last_final_error_m, 0) = SL_D(prev_dist_m, 0);
    SL_D(last_arm_m, 0) = SL_D(arm_m, 0);
    SL_D(last_mass_kg, 0) = SL_D(mass_kg, 0);
    SL_D(last_task, 0) = SL_D(task_id, 0);
    SL_D(last_gates, 0) = SL_D(gates_passed, 0);
    SL_D(last_collision, 0) = SL_D(last_crash, 0) * SL_D(collided, 0);
}

/* ============================================================================================
 * 12. The API (called from Python through cffi).
 * ========================================================================================== */

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
    SL_ALLOC(e->ring, float, (size_t)slots * 4 * np);
    SL_ALLOC(e->block, float, (size_t)SL_N_ROWS * SL_BLOCK);
    SL_ALLOC(e->gates, float, ns * SL_MAX_GATES * SL_GATE_FLOATS);
    SL_ALLOC(e->n_gates, int, ns);
    SL_ALLOC(e->obstacles, float, ns * SL_MAX_OBSTACLES * 4);
    SL_ALLOC(e->n_obstacles, int, ns);
    SL_ALLOC(e->formation, float, ns * (size_t)e->space_size * 3);
    SL_ALLOC(e->space_rng, uint32_t, ns);
#undef SL_ALLOC
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
        else if (e->action_mode == SL_ACTION_MOTOR) sl_physics(e, SL_ACTION_MOTOR, i0, i1);
        else sl_physics(e, SL_ACTION_CTBR, i0, i1);
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
            sl_observe_drone(&e->rnd, e->f, e->n_pad, i, &e->rng[i], e->final_obs + (size_t)i * SL_OBS_SIZE, 1);
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
        for (int m = 0; m < 4; m++) SL_D(action_hist, m) = e->actions[i * 4 + m];
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
        int inside = fabsf(g[0]) <= e->task.bounds_m[0] && fabsf(g[1]) <= e->task.bounds_m[1] && g[2] - g[7] >= 0.f &&
                     g[2] + g[7] <= e->task.bounds_m[2];
        if (!(fabsf(nn - 1.f) < 1e-3f) || !(g[6] > 0.f && g[7] > 0.f) || !inside) {
            snprintf(err, (size_t)errlen, "gate %d: centre (%g, %g, %g), half size (%g, %g): needs a unit normal, a positive size "
                     "and to lie inside the task's bounds_m (%g, %g, %g)", k, (double)g[0], (double)g[1], (double)g[2],
                     (double)g[6], (double)g[7], (double)e->task.bounds_m[0], (double)e->task.bounds_m[1], (double)e->task.bounds_m[2]);
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
    sl_observe(&in, out, 1);
}

/* One motor of the profile on its own (the thrust stand's view of the sim): throttle[k] in [0,1]
 * held for dt each, through the throttle curve, the battery ratio v_frac, the pure delay and the
 * lag (RK4, as in flight). Writes the rotor speed at the end of each step. omega0: the speed
 * before the first step, as if commanded all along. */
void sl_motor_response(const SlParams *p, const float *throttle, int n_steps, float dt, float v_frac,
                       float omega0, float *omega_out) {
    int delay = (int)lrintf(p->motor_delay_s / dt);
    float inv_up = 1.f / p->motor_tau_up_s, inv_down = 1.f / p->motor_tau_down_s;
    float cap = p->omega_max_rad_s * v_frac, omega = omega0;
    for (int k = 0; k < n_steps; k++) {
        float cmd = omega0;
        if (k - delay >= 0) {
            float u = sl_clamp(throttle[k - delay], 0.f, 1.f);
            float c = p->throttle_to_omega_rad_s[0] + u * (p->throttle_to_omega_rad_s[1] + u * p->throttle_to_omega_rad_s[2]);
            cmd = sl_clamp(c * v_frac, 0.f, cap);
        }
        float k1 = sl_motor_rate(cmd, omega, inv_up, inv_down);
        float k2 = sl_motor_rate(cmd, omega + 0.5f * dt * k1, inv_up, inv_down);
        float k3 = sl_motor_rate(cmd, omega + 0.5f * dt * k2, inv_up, inv_down);
        float k4 = sl_motor_rate(cmd, omega + dt * k3, inv_up, inv_down);
        omega += dt / 6.f * (k1 + 2.f * k2 + 2.f * k3 + k4);
        omega_out[k] = omega;
    }
}

/* The tables, for the binding. */
const SlField *sl_param_fields(int *n) { *n = SL_N_PARAM_FIELDS; return SL_PARAM_FIELDS; }
const SlField *sl_randomization_fields(int *n) { *n = SL_N_RANDOMIZATION_FIELDS; return SL_RANDOMIZATION_FIELDS; }
const SlField *sl_task_fields(int *n) { *n = SL_N_TASK_FIELDS; return SL_TASK_FIELDS; }
const SlObsField *sl_obs_fields(int *n) { *n = SL_N_OBS_FIELDS; return SL_OBS_TABLE; }
const SlDroneField *sl_drone_fields(int *n) { *n = SL_N_DRONE_FIELDS; return SL_DRONE_TABLE; }
/* The sim's gate rule for one path segment (for tests and the flight runner): +1 passed, -1 hit
 * the frame or went through backwards, 0 did not cross within the frame. */
int sl_gate_check(const float gate[SL_GATE_FLOATS], const float p0[3], const float p1[3], float radius_m, float frame_m) {
    return sl_gate_event(gate, p0, p1, radius_m, frame_m);
}
const char *sl_task_name(int k) { return k >= 0 && k < SL_N_TASKS ? SL_TASK_NAMES[k] : NULL; }

#endif /* SKYLOOP_DRONE_H */
