"""Skyloop policy_export: a trained policy to an ONNX (or a C header) that carries its contract.

The flight runner needs only `load_policy` (numpy + onnxruntime, no torch):

    from policy_export import load_policy, PolicyContractError
    policy = load_policy("policy.onnx", action_modes=("ctbr",))   # refuses a model that does not fit
    action, state = policy.run(obs, state)

Exporting (`policy_export.export`, `policy_export.c_export`) needs torch and onnx.
"""
from policy_export.contract import OnnxPolicy, PolicyContractError, load_policy

__all__ = ["OnnxPolicy", "PolicyContractError", "load_policy"]
