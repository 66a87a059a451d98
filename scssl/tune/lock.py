"""One driver per study: a lock in the study folder and, for a tracking store that other study folders may
share (a server, a database elsewhere), a marker on the study's MLflow experiment.

The lock is ``driver.lock``, held with ``flock`` for the driver's whole life, so the kernel frees it when
the driver dies however it dies; the file names the holder (host, PID, start) for the message a second driver
prints. The marker is the experiment tag ``scssl.driver`` with the same record and a heartbeat renewed every
``HEARTBEAT`` seconds, so a driver on another host counts as gone once its heartbeat is ``STALE``. A study's
RUNNING runs are closed as a dead driver's only by the driver that holds both.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import psutil

from scssl.settings import ConfigError

LOCK_FILE = "driver.lock"
MARKER = "scssl.driver"
HEARTBEAT = 15.0  # seconds between a live driver's signs of life
STALE = 90.0  # a sign of life older than this is a dead driver's (another host's: its PID cannot be checked)


class StudyBusy(ConfigError):
    """Another live driver holds the study."""


@dataclass(frozen=True)
class Driver:
    """Who holds a study: host, PID, the PID's start time (a PID alone may be reused), start, command."""

    host: str
    pid: int
    pid_started: float
    started: str
    command: str
    heartbeat: float = 0.0

    @classmethod
    def this(cls) -> Driver:
        process = psutil.Process()
        return cls(socket.gethostname(), process.pid, process.create_time(),
                   datetime.now().astimezone().isoformat(timespec="seconds"),
                   shlex.join(["scssl", *sys.argv[1:]]), time.time())

    @classmethod
    def parse(cls, text: str) -> Driver | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def same_process(self, other: Driver) -> bool:
        return (self.host, self.pid, self.pid_started) == (other.host, other.pid, other.pid_started)

    def alive(self, last_sign: float) -> bool:
        """Whether this driver still runs: its process on this host, else a sign of life (epoch seconds) within
        ``STALE``."""
        if self.host == socket.gethostname():
            try:
                process = psutil.Process(self.pid)
                return abs(process.create_time() - self.pid_started) < 1e-3 and process.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                return False
        return time.time() - last_sign < STALE

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host}, started {self.started} (`{self.command}`)"


def _busy(study_dir: Path, holder: Driver | None, where: str) -> StudyBusy:
    who = holder.describe() if holder is not None else "a driver whose record is not readable yet"
    return StudyBusy(f"study folder {study_dir} is in use by another scssl driver ({where}): {who}; wait for it to "
                     f"end or stop it (Ctrl-C, or kill {holder.pid if holder else '<PID>'}), then run again")


class StudyLock:
    """The lock of one study folder (and the marker on its MLflow experiment, when ``marked``)."""

    def __init__(self, study_dir: Path):
        self.study_dir = study_dir
        self.path = study_dir / LOCK_FILE
        self.me = Driver.this()
        self._fd: int | None = None
        self._marker = None  # (client, experiment id) once the marker is taken
        self._stop = threading.Event()

    def check(self) -> None:
        """Raise ``StudyBusy`` when a live driver holds the folder; takes nothing (the folder may not exist)."""
        if not self.path.exists():
            return
        fd = os.open(self.path, os.O_RDWR)
        try:
            self._take(fd)
        finally:
            os.close(fd)  # closing frees the flock taken to look

    def acquire(self) -> None:
        """Take the folder's lock (making the folder), or raise ``StudyBusy``; a dead driver's is taken over."""
        self.study_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._take(fd)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(self.me)).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        threading.Thread(target=self._beat, name="scssl-heartbeat", daemon=True).start()

    def _take(self, fd: int) -> None:
        """flock ``fd``; busy when another process holds it, or (a folder shared between hosts whose file system
        keeps no locks across them) when its record names a live driver of another host."""
        holder = Driver.parse(os.pread(fd, 4096, 0).decode(errors="replace"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(self.study_dir, holder, self.path.name) from None
        except OSError as err:  # a file system without flock: the record and its heartbeat decide alone
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        if holder is not None and holder.host != self.me.host and holder.alive(os.fstat(fd).st_mtime):
            raise _busy(self.study_dir, holder, self.path.name)

    def take_marker(self, client, experiment_id: str) -> None:
        """Take the ``scssl.driver`` tag of the study's MLflow experiment, or raise ``StudyBusy``; for a store
        that study folders on other hosts may share."""
        holder = Driver.parse(client.get_experiment(experiment_id).tags.get(MARKER, ""))
        if holder is not None and not holder.same_process(self.me) and holder.alive(holder.heartbeat):
            raise _busy(self.study_dir, holder, f"marker {MARKER} of MLflow experiment {experiment_id}")
        client.set_experiment_tag(experiment_id, MARKER, json.dumps(asdict(self.me)))
        time.sleep(1.0)  # two drivers that set it at once: the later write wins, the other one sees it
        holder = Driver.parse(client.get_experiment(experiment_id).tags.get(MARKER, ""))
        if holder is None or not holder.same_process(self.me):
            raise _busy(self.study_dir, holder, f"marker {MARKER} of MLflow experiment {experiment_id}")
        self._marker = (client, experiment_id)

    def _beat(self) -> None:
        """Renew the lock file's time and the marker's heartbeat; a store that does not answer is skipped (the
        study itself notices)."""
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
                if self._marker is not None:
                    client, experiment_id = self._marker
                    beat = Driver(**{**asdict(self.me), "heartbeat": time.time()})
                    client.raw.set_experiment_tag(experiment_id, MARKER, json.dumps(asdict(beat)))
            except Exception:
                pass

    def release(self) -> None:
        """Clear the marker and the record, then free the lock."""
        self._stop.set()
        if self._marker is not None:
            client, experiment_id = self._marker
            try:
                client.raw.set_experiment_tag(experiment_id, MARKER, "")
            except Exception:  # a lost store keeps the marker; its heartbeat goes stale
                pass
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
