"""Skyloop simulator: the C quadrotor core (sim/c/*.h), its binding, profiles and the vector env."""
from sim.core import (ACTION_HISTORY, ACTION_MODES, ACTION_SIZE, OBS_FIELDS, OBS_LAYOUT_VERSION, OBS_SIZE,
                      SimError, observe, obs_slice)
from sim.profiles import Profile, ProfileError, available_profiles, load_profile

__all__ = ["ACTION_HISTORY", "ACTION_MODES", "ACTION_SIZE", "OBS_FIELDS", "OBS_LAYOUT_VERSION", "OBS_SIZE",
           "SimError", "observe", "obs_slice", "Profile", "ProfileError", "available_profiles", "load_profile"]
