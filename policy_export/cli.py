"""`skyloop export`: a trained policy to ONNX (or C) with its contract; `--inspect` an exported model.

    skyloop export policy.pt -o policy.onnx        # ONNX, parity-checked against PyTorch on sim rollouts
    skyloop export --c policy.pt -o policy.h       # one dependency-free C header (MLP or GRU)
    skyloop export --inspect policy.onnx [--json]  # the contract, and whether it fits the installed sim
"""
from __future__ import annotations

import json
import os
import sys

from policy_export.export import TOLERANCE


def add_arguments(parser) -> None:
    parser.add_argument("policy", help="the checkpoint to export (.pt), or with --inspect the model (.onnx)")
    parser.add_argument("-o", "--output", help="file to write (default: POLICY with .onnx, or .h with --c)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--c", action="store_true", help="write a C header instead of ONNX")
    what.add_argument("--inspect", action="store_true", help="print the contract of an exported .onnx")
    parser.add_argument("--json", action="store_true", help="with --inspect: print the metadata as one JSON object")
    parser.add_argument("--samples", type=int, default=4096, help="observations of the parity check (sim rollouts)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parity rollouts")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="parity: max |action difference| allowed")


def run(args) -> int:
    if args.inspect:
        from policy_export.contract import decode_metadata, format_table, read_metadata

        props = read_metadata(args.policy)
        print(json.dumps(decode_metadata(props, args.policy)) if args.json else format_table(args.policy, props))
        return 0
    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1, got {args.samples}")
    output = args.output or os.path.splitext(args.policy)[0] + (".h" if args.c else ".onnx")
    print(f"skyloop export: {args.policy} -> {output}", file=sys.stderr)
    if args.c:
        from policy_export.c_export import export_c

        values = export_c(args.policy, output, args.samples, args.seed, args.tolerance)
    else:
        from policy_export.export import export_onnx

        values = export_onnx(args.policy, output, args.samples, args.seed, args.tolerance)
    parity = values.get("parity_max_abs_error")
    checked = (f"parity max |diff| {parity:.2g} on {values['parity_samples']} sim observations"
               if parity is not None else "parity NOT checked (no C compiler)")
    print(f"wrote {output}: {values['action_mode']} {'GRU' if values['recurrent'] else 'MLP'} policy, "
          f"obs layout v{values['obs_layout_version']} ({values['obs_size']} values), {values['control_hz']:g} Hz; "
          f"{checked}")
    return 0
