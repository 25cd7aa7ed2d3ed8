/* skyloop.h -- the Skyloop quadrotor simulator in C, read in this order:
 *   physics.h  one drone: parameters, random numbers, dynamics, RK4, motors, rate loop
 *   env.h      N drones for the vector unit: task configuration, observation layout, the per-drone
 *              block, the physics kernel and its scalar reference, observations, randomization
 *   world.h    spaces: gates, spheres, formation slots, neighbours and sensing
 *   tasks.h    the tasks behind a table: reset, target, reward, termination, records
 *   api.h      the functions Python calls
 * Python (sim/core.py) reads sizes, offsets, defaults and field tables from here through cffi;
 * it never copies them.
 */
#include "api.h"
