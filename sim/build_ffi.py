"""cffi (API mode) build of the C core, sim/c/skyloop.h (which includes sim/c/*.h in reading order),
into the extension module sim._skyloop_c.

Run at install time by setup.py (`pip install -e .` rebuilds it after a change to sim/c/*.h). The
declarations below are only what Python calls; struct layouts and field names come from the tables
in the C files, so nothing here repeats them.
Flags: -O3 and the host's vector extensions (the core is compiled on the user's machine; the vector
width follows from what the compiler targets). -ffp-contract=off: the C code fuses multiply-adds
itself (SL_FMA), so the vector kernels and their scalar reference round alike.
Set SKYLOOP_CFLAGS to replace the optimisation flags (e.g. "-O2" for a portable build).
"""
import os
import platform
import shlex

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

CDEF = """
typedef struct { const char *name; int offset; int count; float lo, hi; const char *doc; } SlField;
typedef struct { const char *name; int offset, count; } SlObsField;
typedef struct { const char *name; int width, row; } SlDroneField;
typedef struct { ...; } SlParams;
typedef struct { ...; } SlRandomization;
typedef struct { ...; } SlTaskConfig;
typedef struct {
    int n, n_pad, action_mode, substeps;
    float dt_s, control_dt_s;
    float *obs; float *actions; float *rewards; uint8_t *terminals; uint8_t *truncations; float *final_obs;
    float *f; uint32_t *rng; float *ring;
    int space_size, n_spaces;
    float *gates; int *n_gates; float *obstacles; int *n_obstacles; float *formation;
    ...;
} SlEnv;

#define SL_OBS_SIZE ...
#define SL_OBS_LAYOUT_VERSION ...
#define SL_ACTION_SIZE ...
#define SL_ACTION_HISTORY ...
#define SL_ACTION_MOTOR ...
#define SL_ACTION_CTBR ...
#define SL_N_MOTORS ...
#define SL_DELAY_SLOTS ...
#define SL_N_ROWS ...
#define SL_N_TASKS ...
#define SL_N_CRASH_CAUSES ...
#define SL_MAX_GATES ...
#define SL_GATE_FLOATS ...
#define SL_OBS_GATES ...
#define SL_OBS_OBSTACLES ...
#define SL_MAX_OBSTACLES ...
#define SL_GATE_CENTRE ...
#define SL_GATE_NORMAL ...
#define SL_GATE_HALF_WIDTH ...
#define SL_GATE_HALF_HEIGHT ...
static const float SL_GRAVITY_M_S2;       /* the one value of g: every Python use reads sim.core.GRAVITY_M_S2 */

const SlField *sl_param_fields(int *n);
const SlField *sl_randomization_fields(int *n);
const SlField *sl_task_fields(int *n);
const SlObsField *sl_obs_fields(int *n);
const SlDroneField *sl_drone_fields(int *n);

SlEnv *sl_env_new(int n, const SlParams *p, const SlRandomization *r, const SlTaskConfig *t, int action_mode,
                  char *err, int errlen);
void sl_env_free(SlEnv *e);
size_t sl_env_bytes(const SlEnv *e);
uint64_t sl_env_substeps_integrated(const SlEnv *e);
const char *sl_build_target(int *vector_bytes);
void sl_env_set_reference(SlEnv *e, int on);
void sl_env_reset(SlEnv *e, uint64_t seed);
long sl_env_step(SlEnv *e);
long sl_env_step_physics(SlEnv *e);
void sl_env_sync_drone(SlEnv *e, int i, const float held[4]);
void sl_motor_response(const SlParams *p, const float *throttle, int n_steps, float dt, float v_frac,
                       float omega0, float *omega_out);
void sl_observe_state(const float pos_enu_m[3], const float vel_enu_m_s[3], const float quat_wxyz[4],
                      const float omega_flu_rad_s[3], const float target_enu_m[3], const float *last_actions,
                      float hover_action, const float target_vel_enu_m_s[3], const float *gates, int n_gates,
                      const float *obstacles, int n_obstacles, float *out);
int sl_env_set_course(SlEnv *e, int n, const float *gates, char *err, int errlen);
int sl_env_set_task(SlEnv *e, const SlTaskConfig *t, char *err, int errlen);
int sl_neighbors(int n, const float *pos, const float *radius, float sense_m, int use_grid, uint8_t *collided,
                 int *nearest, float *nearest_dist);
const char *sl_task_name(int k);
const char *sl_crash_cause_name(int k);
void sl_task_defaults(SlTaskConfig *t);
void sl_throttle_for_omega_n(const float curve[3], const float *omega, int n, float *throttle);
int sl_gate_check(const float gate[8], const float p0[3], const float p1[3], float radius_m, float frame_m);
"""


def compile_flags():
    if os.environ.get("SKYLOOP_CFLAGS"):
        return shlex.split(os.environ["SKYLOOP_CFLAGS"])
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-fno-tree-loop-distribute-patterns", "-march=native"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-mprefer-vector-width=512")
    return flags


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
C_DIR = os.path.join(HERE, "c")
ffibuilder.set_source(
    "sim._skyloop_c",
    '#include "skyloop.h"',
    include_dirs=[C_DIR],
    depends=[os.path.join(C_DIR, name) for name in sorted(os.listdir(C_DIR)) if name.endswith(".h")],
    extra_compile_args=compile_flags(),
)
