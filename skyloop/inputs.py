"""Reading what a user hands us (JSON files, numbers from the command line) without tracebacks.

    data = read_json(path, PlanError)                 # PlanError("my.json: ...") for anything unreadable
    problems = []
    rate = number(data.get("rate_hz"), "rate_hz", problems, lo=0, hi=1000, lo_open=True)
    if problems: raise PlanError(f"{path}: " + "; ".join(problems))

A file that is binary, UTF-16, too large, nested too deep or not JSON becomes one error naming
the file; integers too long for a float become inf, so the field's own check refuses them by name.
A limit must be a finite number in its range: NaN compares false with everything, so a NaN limit
would otherwise switch its check off.
"""
from __future__ import annotations

import json
import math

MAX_JSON_BYTES = 16 * 1024 * 1024
_MAX_INT_DIGITS = 18


def _parse_int(text: str):
    return int(text) if len(text.lstrip("-")) <= _MAX_INT_DIGITS else float(text)  # 400 digits -> inf


def loads_json(text: str, where: str, error=ValueError):
    """json.loads that turns every way a text can fail into `error("<where>: ...")`."""
    try:
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply to be a settings file") from None
    except (ValueError, OverflowError) as exc:
        raise error(f"{where}: not valid JSON ({exc})") from None


def read_json(path: str, error=ValueError, max_bytes: int = MAX_JSON_BYTES):
    """The JSON value in a UTF-8 file; `error` (with the file's name and the fix) for anything else."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise error(f"{path}: larger than {max_bytes // (1024 * 1024)} MiB, not a settings file")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise error(f"{path}: the file is UTF-16; save it as UTF-8")
    if b"\x00" in raw:
        raise error(f"{path}: a binary file, not JSON text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return loads_json(text, path, error)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def number(value, name: str, problems: list, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, integer: bool = False, unit: str = ""):
    """`value` if it is a finite number (a whole one with `integer`) in [lo, hi] (lo excluded with
    lo_open); otherwise a sentence naming `name` goes to `problems` and None comes back. Booleans
    are not numbers here."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and isinstance(value, float):
        ok = math.isfinite(value) and (not integer or value.is_integer())
    if ok and lo is not None and (value <= lo if lo_open else value < lo):
        ok = False
    if ok and hi is not None and value > hi:
        ok = False
    if ok:
        return int(value) if integer else value
    kind = "a whole number" if integer else "a finite number"
    lo_text = "" if lo is None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
    hi_text = "" if hi is None else f"<= {hi:g}"
    span = " and ".join(t for t in (lo_text, hi_text) if t)
    problems.append(f"{name} must be {kind}{' ' + span if span else ''}{' ' + unit if unit else ''}, got {_short(value)}")
    return None


def checked(value, name: str, error=ValueError, **bounds):
    """number() for one value: returns it, or raises `error` with the sentence."""
    problems: list = []
    out = number(value, name, problems, **bounds)
    if problems:
        raise error(problems[0])
    return out


def finite_arg(lo: float | None = None, hi: float | None = None, lo_open: bool = False, integer: bool = False):
    """An argparse `type=` for a limit: a finite number in range (NaN, inf and 1e309 refused)."""
    import argparse

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        problems: list = []
        number(value, "the value", problems, lo=lo, hi=hi, lo_open=lo_open, integer=integer)
        if problems:
            raise argparse.ArgumentTypeError(problems[0].replace("the value must", "must"))
        return value

    parse.__name__ = "number"
    return parse
