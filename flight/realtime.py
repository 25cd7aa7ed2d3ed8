"""CPU priority: the control loop ahead of everything else a busy computer runs; its helpers behind.

    with raised_priority() as words:   # fly, before it starts anything: real-time where allowed, else nice -10
        ...                            # restored when the flight is over
    lower_priority(10)    # a helper process (the ghost, the page server): normal scheduling, niced

Why real time: nice only orders the processes of one session (Linux puts each terminal's or
service's processes in a group of its own, and the groups share the CPU equally, whatever the
nice values inside), so a compile or a training run started elsewhere still delays the loop's
10 ms ticks. SCHED_FIFO runs the loop's threads the moment they wake, ahead of every normally
scheduled process. Their work is bounded (a tick is about 1 ms of the 10 ms period, the link's
reader and the page feed sleep between messages), and the kernel keeps 5 % of each second for
normal processes (sched_rt_runtime_us) in any case. Every thread of the flight process runs at
the same priority, so none holding Python's lock (the GIL) is pushed aside while another waits
for it. Processes started from it inherit the priority: the simulated vehicle keeps it (it is the
vehicle's own clock), the ghost and the page server drop it (`lower_priority`).
"""
from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)
RT_PRIORITY = 10            # SCHED_FIFO priority (1..99): above every normal process, below the kernel's (50)
NICE_BOOST = 10             # the fallback: nice -NICE_BOOST


def raise_priority() -> str:
    """Puts the calling thread, and every thread and process it starts from now on, on SCHED_FIFO
    at RT_PRIORITY where allowed (root, CAP_SYS_NICE, or an rtprio limit: `ulimit -r`), else at
    nice -NICE_BOOST where allowed; says in words what it got (and, when neither, how to get it)."""
    setscheduler = getattr(os, "sched_setscheduler", None)
    if setscheduler is not None:
        try:
            setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
            return f"real-time (SCHED_FIFO priority {RT_PRIORITY})"
        except OSError as exc:
            why = exc.strerror or str(exc)
    else:
        why = "no real-time scheduling on this system"
    try:
        now = os.nice(0)
        if now > -NICE_BOOST:
            os.nice(-NICE_BOOST - now)
        return f"nice -{NICE_BOOST} (real-time refused: {why})"
    except OSError as exc:
        log.info("running at normal CPU priority (%s); on a busy computer start fly with `sudo`, allow it real-time "
                 "priority (`ulimit -r %d`, /etc/security/limits.conf rtprio) or give it a core of its own (taskset)",
                 exc.strerror or exc, RT_PRIORITY)
        return "normal (neither real-time nor nice allowed)"


@contextlib.contextmanager
def raised_priority():
    """raise_priority() for the block (its words are the value), then this thread's scheduling and
    niceness as they were (a flight run inside a longer-lived process, e.g. a test session, leaves
    no real-time thread behind)."""
    if getattr(os, "sched_getscheduler", None) is None:
        before = None
    else:
        before = (os.sched_getscheduler(0), os.sched_getparam(0))
    nice_before = os.nice(0)
    try:
        yield raise_priority()
    finally:
        if before is not None and os.sched_getscheduler(0) != before[0]:
            os.sched_setscheduler(0, *before)
        with contextlib.suppress(OSError):
            os.nice(nice_before - os.nice(0))


def lower_priority(nice: int = 10) -> None:
    """Back to normal scheduling (a process started by a real-time one inherits real time), then
    `nice` more niceness: a helper that must never compete with the control loop."""
    if getattr(os, "sched_getscheduler", None) is not None and os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    if nice:
        os.nice(nice)


def describe() -> str:
    """This thread's scheduling, in words (for the flight log's metadata)."""
    if getattr(os, "sched_getscheduler", None) is None:
        return f"nice {os.nice(0)}"
    policy = os.sched_getscheduler(0)
    if policy == os.SCHED_FIFO:
        return f"SCHED_FIFO priority {os.sched_getparam(0).sched_priority}"
    return f"nice {os.nice(0)}"
