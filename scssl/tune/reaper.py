"""Ends the local Ray processes of a driver that died without shutting Ray down (``kill -9``).

Ray's raylet and GCS die with the driver that started them, but its dashboard and runtime-env
agents are orphaned and live on. When a study starts a local Ray it runs this module in a session
of its own (so that a signal to the driver's process group does not reach it) with the driver's
PID and the PIDs of Ray's processes; once the driver is gone it kills those that still exist.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil


def watch(since: float) -> None:
    """Start a reaper for this driver's child processes started at or after ``since`` (``time.time()``
    before ``ray.init`` of a local Ray): Ray's, not others the process may have."""
    driver = psutil.Process()
    ray_processes = [p for p in driver.children(recursive=True) if p.create_time() >= since - 1.0]
    names = [_name(p) for p in [driver, *ray_processes]]
    subprocess.Popen([sys.executable, "-m", "scssl.tune.reaper", *names], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _name(process: psutil.Process) -> str:
    """PID and start time: a PID alone may be reused by another process."""
    return f"{process.pid}:{process.create_time()}"


def _alive(name: str) -> psutil.Process | None:
    pid, created = name.split(":")
    try:
        process = psutil.Process(int(pid))
        if _name(process) == name and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except psutil.Error:
        pass
    return None


def reap(driver: str, processes: list[str], poll: float = 1.0) -> None:
    while _alive(driver):
        time.sleep(poll)
    for name in processes:
        process = _alive(name)
        if process is not None:
            try:
                process.kill()
            except psutil.Error:
                pass


if __name__ == "__main__":
    reap(sys.argv[1], sys.argv[2:])
