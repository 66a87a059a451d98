"""A study on a two-node Ray cluster started on this machine with `ray start`: the head on the machine's
address (where the driver runs, as on a real head node), the worker on 127.0.0.2."""

import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray._private.services import get_node_ip_address


pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ray_start(*args: str, env: dict) -> subprocess.Popen:
    """`ray start --block` in its own process group, so that the test can stop exactly this node."""
    return subprocess.Popen([RAY, "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _nodes_alive(address: str, env: dict) -> int:
    script = f"import ray; ray.init(address='{address}', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


@pytest.fixture
def two_node_cluster(monkeypatch):
    port, head_ip = _free_port(), get_node_ip_address()
    address = f"{head_ip}:{port}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # both nodes and the driver on one trusted machine
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    head = _ray_start("--head", f"--node-ip-address={head_ip}", f"--port={port}", "--include-dashboard=false",
                      f"--temp-dir={temp_dir}", env=env)
    nodes = [head]
    try:
        deadline = time.monotonic() + 120
        worker = None
        while time.monotonic() < deadline:
            if worker is None and _nodes_alive(address, env) >= 1:
                worker = _ray_start(f"--address={address}", "--node-ip-address=127.0.0.2", env=env)
                nodes.append(worker)
            if worker is not None and _nodes_alive(address, env) == 2:
                break
            time.sleep(1)
        else:
            raise AssertionError("the two-node Ray cluster did not come up")
        yield address, head_ip
    finally:
        for node in reversed(nodes):  # `ray start --block` stops its node's processes on SIGTERM
            os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_study_runs_across_two_nodes(two_node_cluster, tmp_path, small_experiment):
    experiment = small_experiment("two_nodes", train={"epochs": 15, "batch_size": 64}, final={"seeds": [0, 1]},
                                  tune={"num_samples": 4, "grace_period": 15, "cpus_per_trial": 1,
                                        # trials of a second each: with reused workers the head's first
                                        # worker, ready before the other node's, would run all four
                                        "reuse_actors": False})
    address, head_ip = two_node_cluster
    # its own process, as on a real head node: a Python process whose Ray has already run a local study
    # (pytest's, after the other tests) gets its trial actors cancelled on a second cluster
    scssl = Path(sys.executable).parent / "scssl"
    subprocess.run([str(scssl), "run", str(experiment), "--address", address], check=True, timeout=900)
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("two_nodes")
    tune_runs = client.search_runs([exp.experiment_id], "tags.`scssl.stage` = 'tune'")
    assert len(tune_runs) == 4 and all(r.info.status == "FINISHED" for r in tune_runs)
    assert {r.data.tags["scssl.node"] for r in tune_runs} == {head_ip, "127.0.0.2"}
    retrain = client.search_runs([exp.experiment_id], "tags.`scssl.stage` = 'retrain'")
    assert len(retrain) == 2 and all(r.info.status == "FINISHED" for r in retrain)
