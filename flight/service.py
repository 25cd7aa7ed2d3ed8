"""What the long-running parts of flight share (the simulated vehicle, the firmware SITLs and
their bridges, the page servers): used in a `with`, they start on enter and stop on exit; and a
child process stopped politely, then for good."""
from __future__ import annotations

import subprocess
import tempfile
import threading


class Service:
    """A `with`-able part: start() on enter, stop() on exit, whatever ended the block."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class Worker:
    """One daemon thread running `target()` until stop(); `target` watches `stop_event`."""

    def __init__(self, target, name: str, join_timeout_s: float = 2.0):
        self.target, self.name, self.join_timeout_s = target, name, join_timeout_s
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.target, daemon=True, name=self.name)
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout_s)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class ThreadService(Service):
    """A Service that is one Worker thread (`self._worker`, made in __init__); after the thread has
    ended, release() closes what it held (sockets)."""
    _worker: Worker

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self.release()

    def release(self) -> None:
        pass

    def alive(self) -> bool:
        return self._worker.alive()


class FirmwareSitl(Service):
    """A firmware SITL: its process, the bridge that is its physics, and the scratch folder it runs in.
    Stopping ends the firmware (its motors stop with it), then the bridge, then removes the folder."""
    process: subprocess.Popen | None = None
    bridge = None                       # a Service with alive()
    workdir: tempfile.TemporaryDirectory | None = None

    def stop(self) -> None:
        stop_process(self.process)
        if self.bridge is not None:
            self.bridge.stop()
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None

    def alive(self) -> bool:
        return (self.process is not None and self.process.poll() is None
                and (self.bridge is None or self.bridge.alive()))


def stop_child(process, send_stop, timeout_s: float) -> None:
    """A multiprocessing child: send_stop() (its stop message on its pipe; a closed pipe is fine),
    up to timeout_s for it to exit, then SIGTERM and 2 s more."""
    try:
        send_stop()
    except (OSError, ValueError):
        pass
    process.join(timeout=timeout_s)
    if process.is_alive():
        process.terminate()
        process.join(timeout=2.0)


def stop_process(process: subprocess.Popen | None, timeout_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within timeout_s; waits for it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
