"""The reaper ends the processes a killed driver started (as Ray's agents, which outlive their driver)."""

import subprocess
import sys
import textwrap

import psutil
from conftest import wait_for

DRIVER = textwrap.dedent("""
    import subprocess, sys, time
    from scssl.tune.reaper import watch
    # children in sessions of their own, as Ray's agents: the driver's death does not end them
    earlier = subprocess.Popen(["sleep", "600"], start_new_session=True)  # not Ray's: started before it
    time.sleep(1.5)
    since = time.time()  # as before ray.init
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    watch(since)
    print(child.pid, earlier.pid, flush=True)
    time.sleep(600)
""")


def _start():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    child, earlier = (psutil.Process(int(pid)) for pid in driver.stdout.readline().split())
    return driver, child, earlier


def _ended(process) -> bool:
    return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE


def test_a_killed_drivers_children_are_ended_and_older_ones_left_alone():
    driver, child, earlier = _start()
    try:
        reaper = wait_for(lambda: [p for p in psutil.Process(driver.pid).children()
                                   if "scssl.tune.reaper" in " ".join(p.cmdline())], "the reaper")[0]
        assert f"{child.pid}:" in " ".join(reaper.cmdline()) and f"{earlier.pid}:" not in " ".join(reaper.cmdline())
        assert child.is_running()
        driver.kill()  # SIGKILL: the driver cleans nothing up
        driver.wait(timeout=30)
        wait_for(lambda: _ended(child), "the child to end", 120)
        wait_for(lambda: _ended(reaper), "the reaper to end", 120)
        assert not _ended(earlier)
    finally:
        driver.kill()
        for process in (child, earlier):
            if not _ended(process):
                process.kill()
