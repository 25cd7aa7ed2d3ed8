/* world.h -- the spaces drones fly in: gates (courses, the crossing rule), sphere obstacles,
 * formation slots, and what each drone senses of them and of the other drones (neighbours
 * through a uniform grid).
 */
#ifndef SKYLOOP_WORLD_H
#define SKYLOOP_WORLD_H

#include "env.h"

/* ============================================================================================
 * Worlds and sensing. A space is a box (|x| <= bx, |y| <= by, 0 <= z <= bz) that holds a
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
    for (int a = 0; a < 3; a++) g[SL_GATE_CENTRE + a] = c[a];
    g[SL_GATE_NORMAL] = cosf(yaw_rad); g[SL_GATE_NORMAL + 1] = sinf(yaw_rad); g[SL_GATE_NORMAL + 2] = 0.f;
    g[SL_GATE_HALF_WIDTH] = 0.5f * width_m; g[SL_GATE_HALF_HEIGHT] = 0.5f * height_m;
}

/* The box inside the bounds that keeps `margin` from every wall, floor and ceiling. */
static void sl_inner_box(const SlTaskConfig *t, float margin, float lo[3], float hi[3]) {
    for (int a = 0; a < 3; a++) {
        lo[a] = (a == 2 ? 0.f : -t->bounds_m[a]) + margin;
        hi[a] = t->bounds_m[a] - margin;
        if (lo[a] > hi[a]) lo[a] = hi[a] = 0.5f * (lo[a] + hi[a]);
    }
}

/* What the path p0 -> p1 (one control step, a drone of radius r) did at a gate: +1 passed
 * through the opening in the flight direction, -1 through the opening backwards, -2 hit the
 * frame, 0 nothing (it did not cross the gate's plane within the frame). The frame is solid;
 * the opening is air, so going the wrong way only matters for a race's next gate (sl_task). */
SL_INLINE int sl_gate_event(const float *g, const float p0[3], const float p1[3], float r, float frame_m) {
    float s0 = 0.f, s1 = 0.f;
    for (int a = 0; a < 3; a++) { s0 += (p0[a] - g[a]) * g[3 + a]; s1 += (p1[a] - g[a]) * g[3 + a]; }
    int forward = s0 < 0.f && s1 >= 0.f, backward = s0 >= 0.f && s1 < 0.f;
    if (!forward && !backward) return 0;
    float f = s0 / (s0 - s1), off[3];
    for (int a = 0; a < 3; a++) off[a] = p0[a] + f * (p1[a] - p0[a]) - g[a];
    float u = fabsf(-g[4] * off[0] + g[3] * off[1]), v = fabsf(off[2]);
    int in_opening = u <= g[SL_GATE_HALF_WIDTH] - r && v <= g[SL_GATE_HALF_HEIGHT] - r;
    int in_frame = u <= g[SL_GATE_HALF_WIDTH] + frame_m + r && v <= g[SL_GATE_HALF_HEIGHT] + frame_m + r;
    if (!in_frame) return 0;
    return !in_opening ? -2 : forward ? 1 : -1;
}

/* A random course: each gate a feasible hop (gate_spacing_m_range) from the previous one, turned
 * at most about 70 degrees, facing along the hop (give or take gate_turn_max_rad), or with
 * gate_split_s_prob a split-S (sl_split_s); inside the bounds, and no straight leg between
 * successive gates passing within SL_LEG_CLEAR_M of another gate's frame (the frames are solid and
 * only the next gates are observed). Boxed in, the later attempts take any direction and the last
 * resort hops towards the middle: in the default 10 x 10 m box with 3-6 m hops, 83 % of the courses
 * have a leg that turns back behind a gate's plane (a U-turn around its frame). Returns the number of gates. */
#define SL_LEG_CLEAR_M 0.5f
static int sl_leg_clear(const float *gates, int k, const float cand[3], float cand_yaw, float size_m, float frame_m) {
    float g[SL_GATE_FLOATS];
    sl_set_gate(g, cand, cand_yaw, size_m, size_m);
    for (int j = 0; j + 1 < k; j++) /* the new leg past the older gates, the older legs past the new gate */
        if (sl_gate_event(gates + j * SL_GATE_FLOATS, gates + (k - 1) * SL_GATE_FLOATS, cand, SL_LEG_CLEAR_M, frame_m) == -2 ||
            sl_gate_event(g, gates + j * SL_GATE_FLOATS, gates + (j + 1) * SL_GATE_FLOATS, SL_LEG_CLEAR_M, frame_m) == -2)
            return 0;
    return 1;
}

/* A split-S (race7 has one): the gate straight under (or over) the last one, far enough for both
 * frames and a drone between them, flown the other way, where the box leaves room to turn beyond
 * the last gate. Returns 0 when it does not fit (then the course goes on with a hop). */
#define SL_SPLIT_S_TURN_M 2.f /* room beyond the last gate, along its heading, for the turn */
static int sl_split_s(const SlTaskConfig *t, uint32_t *rng, float size_m, const float *gates, int k,
                      const float lo[3], const float hi[3], float yaw, float cand[3], float *cand_yaw) {
    const float *c = gates + (k - 1) * SL_GATE_FLOATS;
    float beyond[2] = {c[0] + SL_SPLIT_S_TURN_M * cosf(yaw), c[1] + SL_SPLIT_S_TURN_M * sinf(yaw)};
    float gap_m = size_m + 2.f * t->gate_frame_m + 0.5f; /* centre to centre: the frames 0.5 m apart */
    float down = c[2] - lo[2], up = hi[2] - c[2];
    if (beyond[0] < lo[0] || beyond[0] > hi[0] || beyond[1] < lo[1] || beyond[1] > hi[1] || sl_max(down, up) < gap_m)
        return 0;
    float sign = (down >= gap_m && (up < gap_m || sl_uniform(rng) < 0.5f)) ? -1.f : 1.f;
    float dz = sl_uniform_in(rng, gap_m, sign < 0.f ? down : up);
    cand[0] = c[0], cand[1] = c[1], cand[2] = c[2] + sign * dz;
    *cand_yaw = yaw + SL_PI;
    return sl_leg_clear(gates, k, cand, *cand_yaw, size_m, t->gate_frame_m);
}

static int sl_random_course(const SlTaskConfig *t, uint32_t *rng, float size_m, float *gates) {
    int n = (int)sl_uniform_in(rng, t->gate_count_range[0], t->gate_count_range[1] + 0.999f);
    n = n < 1 ? 1 : n > SL_MAX_GATES ? SL_MAX_GATES : n;
    float lo[3], hi[3], c[3];
    sl_inner_box(t, 0.5f * size_m + t->gate_frame_m + 0.5f, lo, hi);
    for (int a = 0; a < 3; a++) c[a] = sl_uniform_in(rng, lo[a], hi[a]);
    float yaw = sl_uniform_in(rng, -SL_PI, SL_PI);
    sl_set_gate(gates, c, yaw, size_m, size_m);
    for (int k = 1; k < n; k++) {
        float cand[3] = {0.f, 0.f, 0.f}, cand_yaw = yaw;
        int ok = t->gate_split_s_prob > 0.f && sl_uniform(rng) < t->gate_split_s_prob &&
                 sl_split_s(t, rng, size_m, gates, k, lo, hi, yaw, cand, &cand_yaw);
        for (int attempt = 0; attempt < 24 && !ok; attempt++) {
            float dir = yaw + (attempt < 16 ? sl_uniform_in(rng, -1.2f, 1.2f) : sl_uniform_in(rng, -SL_PI, SL_PI));
            float hop = sl_uniform_in(rng, t->gate_spacing_m_range[0], t->gate_spacing_m_range[1]);
            cand[0] = c[0] + hop * cosf(dir);
            cand[1] = c[1] + hop * sinf(dir);
            cand[2] = sl_uniform_in(rng, sl_max(lo[2], c[2] - 1.5f), sl_min(hi[2], c[2] + 1.5f));
            ok = 1;
            for (int a = 0; a < 3; a++) ok &= cand[a] >= lo[a] && cand[a] <= hi[a];
            for (int j = 0; j < k && ok; j++) ok = sl_dist3(cand, gates + j * SL_GATE_FLOATS) >= 0.7f * t->gate_spacing_m_range[0];
            cand_yaw = atan2f(cand[1] - c[1], cand[0] - c[0]) + sl_uniform_in(rng, -t->gate_turn_max_rad, t->gate_turn_max_rad);
            ok = ok && sl_leg_clear(gates, k, cand, cand_yaw, size_m, t->gate_frame_m);
        }
        if (!ok) { /* boxed in: hop towards the middle of the box */
            float to[3] = {-c[0], -c[1], 0.f}, len = sl_max(sl_norm3(to), 1e-6f);
            for (int a = 0; a < 2; a++) cand[a] = sl_clamp(c[a] + to[a] / len * t->gate_spacing_m_range[0], lo[a], hi[a]);
            cand[2] = c[2];
            cand_yaw = atan2f(cand[1] - c[1], cand[0] - c[0]);
            if (!sl_leg_clear(gates, k, cand, cand_yaw, size_m, t->gate_frame_m)) return k; /* a shorter course */
        }
        yaw = cand_yaw;
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
        if (sl_dist3(p, g) < sl_max(g[SL_GATE_HALF_WIDTH], g[SL_GATE_HALF_HEIGHT]) + e->task.gate_frame_m + r) return 0;
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
                for (int a = 0; a < 3; a++) p[a] = start[a] + s * (goal[a] - start[a]) + (a == 2 ? 0.43f : 1.f) * t->obstacle_spread_m * sl_normalish(rng);
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

/* Keeps the M nearest (distance, id) pairs, sorted; ties broken by id, so the order in which
 * candidates are visited does not matter. d is not NaN (callers keep only d < sense range). The new
 * pair passes down the M slots, each keeping the lesser; the slots from count on are empty (but
 * initialized: callers zero the arrays) and take it. The all-pairs reference of sl_neighbors keeps
 * its neighbours with this; the sim uses the packed keys below, which give the same M. */
SL_INLINE void sl_keep_nearest(float *dist, int *id, int *count, float d, int j) {
    const int n = *count;
#pragma GCC unroll 8
    for (int k = 0; k < SL_OBS_OBSTACLES; k++) {
        const float dk = dist[k];
        const int ik = id[k];
        const int less = (k >= n) | (d < dk) | ((d == dk) & (j < ik)); /* bitwise: no short-circuit branches */
        dist[k] = less ? d : dk;
        id[k] = less ? j : ik;
        d = less ? dk : d;
        j = less ? ik : j;
    }
    *count = n + (n < SL_OBS_OBSTACLES);
}

/* The M nearest as packed keys: a (distance, id) pair as one unsigned 64-bit number that orders as
 * the pair does (distance first, ties by id), the distance's bits made monotone in the high half
 * (a float's bits flipped so that unsigned order is numeric order), the id in the low half. One
 * insertion is M unsigned min / max pairs, no branches, and a short dependency chain (the float
 * comparison with its id tiebreak compiled to branches that mispredicted). Empty slots hold
 * SL_NEAR_EMPTY, above every key of a distance that is not NaN. -0 becomes +0 first, so it ties
 * with +0 as the float comparison does. */
typedef uint64_t SlNearKey;
#define SL_NEAR_EMPTY UINT64_MAX
SL_INLINE uint32_t sl_monotone_bits(float d) {
    uint32_t b;
    d += 0.f;
    memcpy(&b, &d, sizeof b);
    return b ^ ((uint32_t)((int32_t)b >> 31) | 0x80000000u);
}
SL_INLINE float sl_float_of_monotone(uint32_t m) {
    const uint32_t b = m ^ (m >> 31 ? 0x80000000u : 0xFFFFFFFFu);
    float d;
    memcpy(&d, &b, sizeof d);
    return d;
}
SL_INLINE SlNearKey sl_near_key(uint32_t monotone, int id) { return (SlNearKey)monotone << 32 | (uint32_t)id; }
SL_INLINE float sl_near_dist(SlNearKey key) { return sl_float_of_monotone((uint32_t)(key >> 32)); }
SL_INLINE int sl_near_id(SlNearKey key) { return (int)(uint32_t)key; }
SL_INLINE void sl_near_clear(SlNearKey top[SL_OBS_OBSTACLES]) {
    for (int k = 0; k < SL_OBS_OBSTACLES; k++) top[k] = SL_NEAR_EMPTY;
}
SL_INLINE void sl_near_insert(SlNearKey top[SL_OBS_OBSTACLES], SlNearKey key) {
#pragma GCC unroll 8
    for (int k = 0; k < SL_OBS_OBSTACLES; k++) {
        const SlNearKey t = top[k];
        top[k] = t < key ? t : key;
        key = t < key ? key : t;
    }
}

/* The bits of a vector's lanes that are set (-1), as an integer: lane c is bit c. */
#if defined(__AVX512F__)
#include <immintrin.h>
SL_INLINE uint32_t sl_lane_bits(SlVecI m) { return (uint32_t)_mm512_test_epi32_mask((__m512i)m, (__m512i)m); }
#elif defined(__AVX__)
#include <immintrin.h>
SL_INLINE uint32_t sl_lane_bits(SlVecI m) { return (uint32_t)_mm256_movemask_ps((__m256)m); }
#elif defined(__SSE2__)
#include <emmintrin.h>
SL_INLINE uint32_t sl_lane_bits(SlVecI m) { return (uint32_t)_mm_movemask_ps((__m128)m); }
#else
SL_INLINE uint32_t sl_lane_bits(SlVecI m) {
    uint32_t bits = 0;
    for (int c = 0; c < SL_LANES; c++) bits |= (m[c] != 0 ? 1u : 0u) << c;
    return bits;
}
#endif
typedef int32_t SlVecIU __attribute__((vector_size(SL_VECTOR_BYTES), aligned(4), may_alias)); /* unaligned */

/* Appends the lanes of a and b whose bits are set to out_a and out_b (in lane order); returns how
 * many. The outputs have room for a whole vector past the last lane appended. */
#if defined(__AVX512F__)
SL_INLINE int sl_append_lanes(uint32_t bits, SlVecI a, SlVecI b, int32_t *out_a, int32_t *out_b) {
    /* compress in a register, then one plain store (a compressing store is slow on some CPUs) */
    _mm512_storeu_si512(out_a, _mm512_maskz_compress_epi32((__mmask16)bits, (__m512i)a));
    _mm512_storeu_si512(out_b, _mm512_maskz_compress_epi32((__mmask16)bits, (__m512i)b));
    return __builtin_popcount(bits);
}
#else
SL_INLINE int sl_append_lanes(uint32_t bits, SlVecI a, SlVecI b, int32_t *out_a, int32_t *out_b) {
    int h = 0;
    for (int c = 0; c < SL_LANES; c++) { /* every lane stored, the count advanced by its bit: no branches */
        out_a[h] = a[c];
        out_b[h] = b[c];
        h += (int)(bits >> c & 1u);
    }
    return h;
}
#endif

/* Drone i (at p, radius r) against the candidates k .. k + SL_LANES - 1 of the sorted arrays
 * (positions xs, ys, zs, radii rs, ids; padded by SL_LANES), those from k1 on left out, SL_LANES
 * at a time: the surface distances (the same operations as sl_dist3, so the same numbers), *touch
 * set if any is below zero, and the candidates closer than sense_m appended to hit_bits (their
 * distances' monotone bits, as sl_monotone_bits makes them) and hit_ids. Returns how many. */
SL_INLINE int sl_sense_lanes(const float *xs, const float *ys, const float *zs, const float *rs, const int *ids,
                             int k, int k1, int i, const float p[3], float r, float sense_m, int *touch,
                             int32_t *hit_bits, int32_t *hit_ids) {
    SlVecI lane;
    for (int c = 0; c < SL_LANES; c++) lane[c] = c;
    const SlVec dx = p[0] - *(const SlVecU *)(xs + k), dy = p[1] - *(const SlVecU *)(ys + k), dz = p[2] - *(const SlVecU *)(zs + k);
    SlVec dist = dx * dx + dy * dy + dz * dz;
    for (int c = 0; c < SL_LANES; c++) dist[c] = sqrtf(dist[c]); /* one vector square root */
    dist = dist - r - *(const SlVecU *)(rs + k);
    const SlVecI id = *(const SlVecIU *)(ids + k);
    const SlVecI other = (lane < k1 - k) & (id != i);
    *touch |= sl_lane_bits((dist < 0.f) & other) != 0;
    const SlVecI b = (SlVecI)(dist + 0.f);                /* sl_monotone_bits, a vector at a time */
    const SlVecI monotone = b ^ ((b >> 31) | INT32_MIN);
    return sl_append_lanes(sl_lane_bits((dist < sense_m) & other), monotone, id, hit_bits, hit_ids);
}

/* Drone-drone neighbours of n drones (positions [n][3], radii [n]): for each drone, whether it
 * touches another (surface distance below zero) and its nearest M others closer than sense_m
 * (surface to surface) as sorted keys [n][M] (SL_NEAR_EMPTY: none). A uniform grid of cells no
 * smaller than the query reach keeps this O(n): the drones sorted by cell, so the candidates in a
 * row of 3 cells lie side by side and are measured a vector at a time. The candidates in range are
 * gathered first (distances of all the cells about a drone computed without waiting on each
 * other), then kept. Returns 0, or -1 when out of memory. */
static int sl_neighbor_keys(int n, const float *pos, const float *radius, float sense_m, uint8_t *collided, SlNearKey *keys) {
    for (int i = 0; i < n; i++) {
        collided[i] = 0;
        sl_near_clear(keys + (size_t)i * SL_OBS_OBSTACLES);
    }
    if (n < 2) return 0;
    float r_max = 0.f, lo[3] = {1e30f, 1e30f, 1e30f}, hi[3] = {-1e30f, -1e30f, -1e30f};
    for (int i = 0; i < n; i++) {
        r_max = sl_max(r_max, radius[i]);
        for (int a = 0; a < 3; a++) {
            float x = sl_finite(pos[3 * i + a]) ? pos[3 * i + a] : 0.f; /* a NaN or infinite drone goes to a corner */
            lo[a] = sl_min(lo[a], x); hi[a] = sl_max(hi[a], x);
        }
    }
    /* sized in double: the extent of finite floats can overflow a float, the cell count an int;
     * the cell grows until the grid is small, which it is once the cell exceeds the extent */
    const float reach = sl_max(sense_m + 2.f * r_max, 1e-3f);
    double cell_d = sl_finite(reach) ? (double)reach : 1e39;
    int dim[3] = {1, 1, 1};
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
    const float cell = (float)cell_d;
    /* an axis of at most 3 cells is one: the 3 x 3 x 3 cells about any drone span it anyway, and
     * the candidates in fewer, longer ranges take fewer vectors (a flat box: 3 ranges, not 9) */
    for (int a = 1; a < 3; a++) dim[a] = dim[a] <= 3 ? 1 : dim[a];
    const int cells = dim[0] * dim[1] * dim[2];
    const size_t padded = (size_t)n + SL_LANES;
    void *memory = calloc(4 * padded * sizeof(float) + (2 * (size_t)cells + 1 + 3 * padded + 4 * (size_t)n) * sizeof(int), 1);
    if (!memory) return -1;
    float *xs = (float *)memory, *ys = xs + padded, *zs = ys + padded, *rs = zs + padded; /* in cell order */
    int *order = (int *)(rs + padded), *start = order + padded, *fill = start + cells + 1;
    int *cell_of = fill + cells;                                      /* [n][4]: cell, x, y, z */
    int32_t *hit_bits = cell_of + 4 * n, *hit_ids = hit_bits + padded; /* one drone's candidates in range */
    for (int i = 0; i < n; i++) { /* counting sort of the drones by cell */
        int *c = cell_of + 4 * i;
        for (int a = 0; a < 3; a++) {
            float x = sl_finite(pos[3 * i + a]) ? pos[3 * i + a] : 0.f;
            c[1 + a] = (int)sl_clamp((x - lo[a]) / cell, 0.f, (float)(dim[a] - 1));
        }
        c[0] = (c[3] * dim[1] + c[2]) * dim[0] + c[1];
        start[c[0] + 1]++;
    }
    for (int c = 0; c < cells; c++) start[c + 1] += start[c];
    memcpy(fill, start, (size_t)cells * sizeof(int));
    for (int i = 0; i < n; i++) order[fill[cell_of[4 * i]]++] = i;
    for (int k = 0; k < n; k++) {
        xs[k] = pos[3 * order[k]]; ys[k] = pos[3 * order[k] + 1]; zs[k] = pos[3 * order[k] + 2];
        rs[k] = radius[order[k]];
    }
    for (int k = n; k < (int)padded; k++) order[k] = -1;
    for (int i = 0; i < n; i++) {
        const float *p = pos + 3 * i;
        int touch = 0, hits = 0;
        const int cx = cell_of[4 * i + 1], cy = cell_of[4 * i + 2], cz = cell_of[4 * i + 3];
        const int x0 = cx > 0 ? cx - 1 : 0, x1 = cx + 1 < dim[0] ? cx + 1 : dim[0] - 1;
        const int y0 = cy > 0 ? cy - 1 : 0, y1 = cy + 1 < dim[1] ? cy + 1 : dim[1] - 1;
        for (int z = cz > 0 ? cz - 1 : 0; z <= cz + 1 && z < dim[2]; z++) {
            /* the cells x0..x1 of the rows y0..y1 in this plane: three ranges of the sorted
             * drones, or the one range from the first to the last (with the drones between)
             * where that takes no more vectors */
            int ranges[3][2] = {{0, 0}}, n_ranges = 0, vectors = 0;
            for (int y = y0; y <= y1; y++, n_ranges++) {
                const int row = (z * dim[1] + y) * dim[0];
                ranges[n_ranges][0] = start[row + x0];
                ranges[n_ranges][1] = start[row + x1 + 1];
                vectors += (ranges[n_ranges][1] - ranges[n_ranges][0] + SL_LANES - 1) / SL_LANES;
            }
            if ((ranges[n_ranges - 1][1] - ranges[0][0] + SL_LANES - 1) / SL_LANES <= vectors) {
                ranges[0][1] = ranges[n_ranges - 1][1];
                n_ranges = 1;
            }
            for (int g = 0; g < n_ranges; g++)
                for (int k0 = ranges[g][0]; k0 < ranges[g][1]; k0 += SL_LANES)
                    hits += sl_sense_lanes(xs, ys, zs, rs, order, k0, ranges[g][1], i, p, radius[i], sense_m, &touch,
                                           hit_bits + hits, hit_ids + hits);
        }
        SlNearKey *top = keys + (size_t)i * SL_OBS_OBSTACLES;
        for (int h = 0; h < hits; h++) { /* the test skips most of a crowd once M are kept; the few in range all pass */
            const SlNearKey key = sl_near_key((uint32_t)hit_bits[h], hit_ids[h]);
            if (key < top[SL_OBS_OBSTACLES - 1]) sl_near_insert(top, key);
        }
        collided[i] = (uint8_t)touch;
    }
    free(memory);
    return 0;
}

/* Drone-drone neighbours of n drones (positions [n][3], radii [n]): for each drone, whether it
 * touches another and its nearest M others closer than sense_m (surface to surface): nearest
 * [n][M] ids (-1: none) and their distances. use_grid = 0 checks all pairs, with the float
 * comparisons of sl_keep_nearest (the reference the tests compare the grid and its keys with).
 * Returns 0, or -1 when out of memory. */
int sl_neighbors(int n, const float *pos, const float *radius, float sense_m, int use_grid, uint8_t *collided,
                 int *nearest, float *nearest_dist) {
    if (use_grid) {
        SlNearKey *keys = (SlNearKey *)malloc(((size_t)n + 1) * SL_OBS_OBSTACLES * sizeof(SlNearKey));
        const int status = keys ? sl_neighbor_keys(n, pos, radius, sense_m, collided, keys) : -1;
        for (int k = 0; k < n * SL_OBS_OBSTACLES && status == 0; k++) {
            nearest[k] = keys[k] == SL_NEAR_EMPTY ? -1 : sl_near_id(keys[k]);
            nearest_dist[k] = keys[k] == SL_NEAR_EMPTY ? 0.f : sl_near_dist(keys[k]);
        }
        free(keys);
        return status;
    }
    for (int i = 0; i < n; i++) {
        float dist[SL_OBS_OBSTACLES] = {0};
        int id[SL_OBS_OBSTACLES] = {0}, count = 0, touch = 0;
        const float *p = pos + 3 * i;
        for (int j = 0; j < n; j++) {
            if (j == i) continue;
            float dd = sl_dist3(p, pos + 3 * j) - radius[i] - radius[j];
            touch |= dd < 0.f;
            if (dd < sense_m) sl_keep_nearest(dist, id, &count, dd, j);
        }
        collided[i] = (uint8_t)touch;
        for (int k = 0; k < SL_OBS_OBSTACLES; k++) {
            nearest[i * SL_OBS_OBSTACLES + k] = k < count ? id[k] : -1;
            nearest_dist[i * SL_OBS_OBSTACLES + k] = k < count ? dist[k] : 0.f;
        }
    }
    return 0;
}

/* A space's spheres as columns (centre x, y, z, radius), for measuring SL_LANES of them at a time;
 * the lanes past the last sphere have NaN centres (never in range, never touching). */
typedef struct {
    float x[SL_MAX_OBSTACLES + SL_LANES], y[SL_MAX_OBSTACLES + SL_LANES], z[SL_MAX_OBSTACLES + SL_LANES], r[SL_MAX_OBSTACLES + SL_LANES];
    int n;
} SlSphereColumns;

static void sl_sphere_columns(const SlEnv *e, int space, SlSphereColumns *c) {
    const float *obs = e->obstacles + (size_t)space * SL_MAX_OBSTACLES * 4;
    c->n = e->n_obstacles[space];
    for (int k = 0; k < SL_MAX_OBSTACLES + SL_LANES; k++) {
        const int in = k < c->n;
        c->x[k] = in ? obs[4 * k] : NAN; c->y[k] = in ? obs[4 * k + 1] : NAN; c->z[k] = in ? obs[4 * k + 2] : NAN;
        c->r[k] = in ? obs[4 * k + 3] : 0.f;
    }
}

/* Drone i's senses, given its nearest other drones (keys of ids within its space, from
 * sl_neighbor_keys; any may be empty): adds the space's spheres (from their columns, a vector at a
 * time, when given; else one by one), keeps the M nearest (drones and spheres alike) and sets
 * `collided` on touching any of them. The sphere distances are sl_dist3's operations either way. */
static void sl_sense_finish(SlEnv *e, int i, SlNearKey top[SL_OBS_OBSTACLES], int touch, const SlSphereColumns *cols) {
    float *F = e->f;
    const int np = e->n_pad, space = i / e->space_size, first = space * e->space_size;
    const float p[3] = {SL_D(pos_enu_m, 0), SL_D(pos_enu_m, 1), SL_D(pos_enu_m, 2)}, r = SL_D(radius_m, 0);
    const float *obs = e->obstacles + (size_t)space * SL_MAX_OBSTACLES * 4;
    const float sense_m = e->task.sense_range_m;
    if (cols) {
        for (int k0 = 0; k0 < cols->n; k0 += SL_LANES) {
            const SlVec dx = p[0] - *(const SlVecU *)(cols->x + k0), dy = p[1] - *(const SlVecU *)(cols->y + k0),
                        dz = p[2] - *(const SlVecU *)(cols->z + k0);
            SlVec d = dx * dx + dy * dy + dz * dz;
            for (int c = 0; c < SL_LANES; c++) d[c] = sqrtf(d[c]);
            d = d - *(const SlVecU *)(cols->r + k0) - r;
            touch |= sl_lane_bits(d < 0.f) != 0;                 /* NaN lanes compare false */
            for (uint32_t bits = sl_lane_bits(d < sense_m); bits; bits &= bits - 1) { /* rarely any */
                const int c = __builtin_ctz(bits);
                sl_near_insert(top, sl_near_key(sl_monotone_bits(d[c]), e->space_size + k0 + c));
            }
        }
    } else {
        for (int k = 0; k < e->n_obstacles[space]; k++) {
            const float d = sl_dist3(p, obs + 4 * k) - obs[4 * k + 3] - r;
            touch |= d < 0.f;
            if (d < sense_m) sl_near_insert(top, sl_near_key(sl_monotone_bits(d), e->space_size + k));
        }
    }
    int count = 0;
    for (int k = 0; k < SL_OBS_OBSTACLES; k++) {
        const int present = top[k] != SL_NEAR_EMPTY, j = present ? sl_near_id(top[k]) : 0;
        count += present;
        for (int a = 0; a < 4; a++) {
            float v = 0.f;
            if (present && j < e->space_size) { /* another drone */
                const int i_other = first + j;
                v = a < 3 ? F[(ptrdiff_t)(SL_ROW_pos_enu_m + a) * np + i_other] : F[(ptrdiff_t)SL_ROW_radius_m * np + i_other];
            } else if (present) {
                v = obs[4 * (j - e->space_size) + a];
            }
            SL_D(near, 4 * k + a) = v;
        }
    }
    SL_D(near_count, 0) = (float)count;
    SL_D(collided, 0) = (float)touch;
}

/* Drone i's senses by itself (after its reset, or in a world of its own): all pairs in its space. */
static void sl_sense_pairs(SlEnv *e, int i) {
    float *F = e->f;
    const int np = e->n_pad, first = i / e->space_size * e->space_size;
    const float p[3] = {SL_D(pos_enu_m, 0), SL_D(pos_enu_m, 1), SL_D(pos_enu_m, 2)};
    SlNearKey top[SL_OBS_OBSTACLES];
    int touch = 0;
    sl_near_clear(top);
    for (int j = 0; j < e->space_size; j++) {
        const int o = first + j;
        if (o == i || o >= e->n) continue;
        float q[3] = {F[(ptrdiff_t)SL_ROW_pos_enu_m * np + o], F[(ptrdiff_t)(SL_ROW_pos_enu_m + 1) * np + o],
                      F[(ptrdiff_t)(SL_ROW_pos_enu_m + 2) * np + o]};
        float d = sl_dist3(p, q) - SL_D(radius_m, 0) - F[(ptrdiff_t)SL_ROW_radius_m * np + o];
        touch |= d < 0.f;
        if (d < e->task.sense_range_m) sl_near_insert(top, sl_near_key(sl_monotone_bits(d), j));
    }
    sl_sense_finish(e, i, top, touch, NULL);
}
/* ... inline for the common case, an empty world of its own (nothing to sense: no call, no division) */
SL_INLINE void sl_sense_one(SlEnv *e, int i) {
    if (e->space_size == 1 && e->n_obstacles[i] == 0) {
        float *F = e->f;
        const int np = e->n_pad;
        SL_D(near_count, 0) = SL_D(collided, 0) = 0.f;
        return;
    }
    sl_sense_pairs(e, i);
}

/* Every drone of every shared space senses, through the grid. Returns -1 when out of memory. */
static int sl_sense_spaces(SlEnv *e) {
    const int S = e->space_size, np = e->n_pad;
    float *pos = (float *)malloc((size_t)S * 4 * sizeof(float)), *radius = pos + 3 * S;
    SlNearKey *keys = (SlNearKey *)malloc((size_t)S * SL_OBS_OBSTACLES * sizeof(SlNearKey));
    uint8_t *hit = (uint8_t *)malloc((size_t)S);
    SlSphereColumns *cols = (SlSphereColumns *)malloc(sizeof *cols);
    int status = pos && keys && hit && cols ? 0 : -1;
    for (int space = 0; space < e->n_spaces && status == 0; space++) {
        const int first = space * S, n = e->n - first < S ? e->n - first : S;
        for (int j = 0; j < n; j++) {
            for (int a = 0; a < 3; a++) pos[3 * j + a] = e->f[(ptrdiff_t)(SL_ROW_pos_enu_m + a) * np + first + j];
            radius[j] = e->f[(ptrdiff_t)SL_ROW_radius_m * np + first + j];
        }
        status = sl_neighbor_keys(n, pos, radius, e->task.sense_range_m, hit, keys);
        sl_sphere_columns(e, space, cols);
        for (int j = 0; j < n && status == 0; j++) sl_sense_finish(e, first + j, keys + (size_t)j * SL_OBS_OBSTACLES, hit[j], cols);
    }
    free(pos); free(keys); free(hit); free(cols);
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

/* A shared space's gates as columns (centre and normal, one row per axis), for finding which gates a
 * path crosses the plane of SL_LANES gates at a time; lanes past the last gate have NaN centres
 * (they never cross). */
typedef struct {
    float centre[3][SL_MAX_GATES + SL_LANES] __attribute__((aligned(64)));
    float normal[3][SL_MAX_GATES + SL_LANES] __attribute__((aligned(64)));
    int n;
} SlGateColumns;

static void sl_gate_columns(const float *gates, int n, SlGateColumns *c) {
    c->n = n;
    for (int k = 0; k < SL_MAX_GATES + SL_LANES; k++)
        for (int a = 0; a < 3; a++) {
            c->centre[a][k] = k < n ? gates[k * SL_GATE_FLOATS + SL_GATE_CENTRE + a] : NAN;
            c->normal[a][k] = k < n ? gates[k * SL_GATE_FLOATS + SL_GATE_NORMAL + a] : 0.f;
        }
}

/* The gates whose plane the path p0 -> p1 crosses (either way), as bits (gate k: bit k): the signed
 * distances of sl_gate_event, the same operations, a vector of gates at a time. Only these gates
 * can give sl_gate_event something other than 0. */
SL_INLINE uint32_t sl_gate_crossings(const SlGateColumns *c, const float p0[3], const float p1[3]) {
    uint32_t bits = 0;
    for (int k0 = 0; k0 < c->n; k0 += SL_LANES) {
        SlVec s0 = {0}, s1 = {0};
        for (int a = 0; a < 3; a++) {
            const SlVec g = *(const SlVec *)(c->centre[a] + k0), normal = *(const SlVec *)(c->normal[a] + k0);
            s0 += (p0[a] - g) * normal;
            s1 += (p1[a] - g) * normal;
        }
        bits |= sl_lane_bits(((s0 < 0.f) & (s1 >= 0.f)) | ((s0 >= 0.f) & (s1 < 0.f))) << k0;
    }
    return bits;
}

/* Copies the next gates a racing drone is to pass (wrapping around for the next lap) into its
 * own fields, for the observation; none for the other tasks. */
static void sl_load_next_gates(SlEnv *e, int i) {
    float *F = e->f;
    const int np = e->n_pad, space = i / e->space_size, ng = e->n_gates[space];
    const float left = SL_D(goal, 0) == (float)SL_GOAL_GATES && ng > 0 ? SL_D(gates_to_pass, 0) - SL_D(gates_passed, 0) : 0.f;
    SL_D(next_gates_count, 0) = sl_clamp(left, 0.f, (float)SL_OBS_GATES);
    for (int g = 0; g < SL_OBS_GATES; g++) {
        const int idx = ng > 0 ? ((int)SL_D(next_gate, 0) + g) % ng : 0;
        for (int c = 0; c < SL_GATE_FLOATS; c++)
            SL_D(next_gates, g * SL_GATE_FLOATS + c) = ng > 0 ? e->gates[((size_t)space * SL_MAX_GATES + idx) * SL_GATE_FLOATS + c] : 0.f;
    }
}

#endif /* SKYLOOP_WORLD_H */
