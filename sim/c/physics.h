/* physics.h -- one quadrotor: its parameters, random numbers, rigid-body dynamics (derivatives,
 * RK4, ground contact), motors and the flight controller's rate loop. Nothing here knows about
 * batches, worlds or tasks; env.h lays many drones out for the vector unit.
 *
 * Conventions (see DESIGN.md):
 *   - SI units everywhere, units in names.
 *   - World frame ENU (x east, y north, z up); body frame FLU (x forward, y left, z up).
 *   - Quaternions w, x, y, z, body -> world.
 *   - Motor order (PX4 / ArduPilot quad-X): 1 front-right CCW, 2 back-left CCW,
 *     3 front-left CW, 4 back-right CW (indices 0..3 here). CCW is positive about +z (seen from above).
 */
#ifndef SKYLOOP_PHYSICS_H
#define SKYLOOP_PHYSICS_H

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
 * 1. Constants, the build's vector width, and arithmetic
 * ========================================================================================== */
#define SL_GRAVITY_M_S2 9.80665f /* standard gravity: the one value (Python reads it: sim.core.GRAVITY_M_S2) */
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

enum { SL_ACTION_MOTOR = 0, SL_ACTION_CTBR = 1 };

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

SL_INLINE int sl_finite(float x) { return fabsf(x) <= 3.4028235e38f; } /* false for NaN and infinities */

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
#undef SL_F
#define SL_N_PARAM_FIELDS ((int)(sizeof SL_PARAM_FIELDS / sizeof SL_PARAM_FIELDS[0]))
#define SL_N_RANDOMIZATION_FIELDS ((int)(sizeof SL_RANDOMIZATION_FIELDS / sizeof SL_RANDOMIZATION_FIELDS[0]))

/* ============================================================================================
 * 3. Random numbers: one xorshift32 stream per drone, seeded from (seed, drone index) with
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
 * 4. Rigid-body dynamics. State: position and velocity (world ENU), attitude quaternion
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
 * 5. From action to rotor-speed command.
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

/* The throttle that makes a curve c0 + c1 u + c2 u^2 give rotor speed omega (the rising root,
 * not clipped): the inverse the hover action, the simulated vehicle's telemetry, the MSP link
 * and the sim-vs-real replay all use (Python: sim.core.omega_to_throttle). */
SL_INLINE float sl_throttle_for_omega(const float curve[3], float omega) {
    float c0 = curve[0] - omega, c1 = curve[1], c2 = curve[2];
    return fabsf(c2) < 1e-9f * fabsf(c1) ? -c0 / c1 : (-c1 + sqrtf(sl_max(c1 * c1 - 4.f * c2 * c0, 0.f))) / (2.f * c2);
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

#endif /* SKYLOOP_PHYSICS_H */
