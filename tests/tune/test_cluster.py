import shlex
from pathlib import Path

import pytest
import yaml

from scssl.cli import main
from scssl.settings import ConfigError
from scssl.tune.cluster import check_cluster_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_shipped_cluster_config_validates_against_rays_schema(capsys):
    prepared = check_cluster_config(CLUSTER)
    nodes = prepared["available_node_types"]
    assert nodes["head"]["resources"] == {"CPU": 0}
    assert nodes["gpu_worker"]["resources"]["GPU"] == 1
    assert any("mlflow server" in c for c in prepared["head_start_ray_commands"])
    assert main(["check-cluster", str(CLUSTER)]) == 0
    assert "valid Ray cluster config" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["available_node_types"]["gpu_worker"].update(resourcez={"GPU": 1}), "resourcez"),
        (lambda c: c.update(max_workers="four"), "max_workers"),
        (lambda c: c.update(head_node_type="gpu_head"), "`head_node_type` must be one of `available_node_types`"),
    ],
)
def test_broken_cluster_config_fails_with_a_clear_message(tmp_path, capsys, change, message):
    config = yaml.safe_load(CLUSTER.read_text())
    change(config)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as err:
        check_cluster_config(broken)
    assert str(broken) in str(err.value) and message in str(err.value)
    assert main(["check-cluster", str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err


# --- The MLflow server has no authentication: it must listen on the head's loopback only. ---

README = CLUSTER.parent / "README.md"


def _mlflow_hosts(config: dict) -> list[str]:
    """Every address the head's `mlflow server` command is told to bind (`--host X`, `--host=X`, `-h X`)."""
    commands = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(commands) == 1, commands
    tokens = shlex.split(commands[0])
    hosts = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in ("--host", "-h")]
    hosts += [t.split("=", 1)[1] for t in tokens if t.startswith("--host=")]
    return hosts


def _ingress_problems(config: dict) -> list[str]:
    """Why the config's security group would admit more than SSH from outside the cluster."""
    provider = config["provider"]
    group = provider.get("security_group")
    if group is None:
        return ["provider.security_group is not defined"]
    problems = []
    for name, node in config["available_node_types"].items():
        if "SecurityGroupIds" in node["node_config"]:  # Ray would then leave these nodes out of the group
            problems.append(f"{name} sets its own SecurityGroupIds")
    for rule in group.get("IpPermissions", []):
        if (rule.get("IpProtocol"), rule.get("FromPort"), rule.get("ToPort")) != ("tcp", 22, 22):
            problems.append(f"extra inbound rule {rule}")
    return problems


def test_mlflow_server_binds_the_heads_loopback_only():
    raw = yaml.safe_load(CLUSTER.read_text())
    command = next(c for c in raw["head_start_ray_commands"] if "mlflow server" in c)
    assert "0.0.0.0" not in command and "--port 5000" in command
    assert _mlflow_hosts(raw) == ["127.0.0.1"]
    # The README's driver command and port forward reach that same address and port.
    section = README.read_text().split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    assert "--tracking-uri http://127.0.0.1:5000" in section
    assert "ray attach cluster.yaml -p 5000" in section


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.1.23"])
def test_a_public_mlflow_bind_is_caught(host):
    config = yaml.safe_load(CLUSTER.read_text())
    commands = config["head_start_ray_commands"]
    i = next(i for i, c in enumerate(commands) if "mlflow server" in c)
    commands[i] = commands[i].replace("--host 127.0.0.1", f"--host={host}")
    assert _mlflow_hosts(config) == [host]


def test_security_group_admits_only_ssh_from_outside():
    prepared = check_cluster_config(CLUSTER)
    assert _ingress_problems(prepared) == []
    # Ray's default group name, so Ray creates it with its default rules (intra-cluster traffic, SSH).
    assert prepared["provider"]["security_group"]["GroupName"] == f"ray-autoscaler-{prepared['cluster_name']}"


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["provider"]["security_group"]["IpPermissions"].append(
            {"IpProtocol": "tcp", "FromPort": 5000, "ToPort": 5000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}),
        lambda c: c["provider"]["security_group"]["IpPermissions"].append(
            {"IpProtocol": "-1", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}),
        lambda c: c["available_node_types"]["head"]["node_config"].update(SecurityGroupIds=["sg-0123"]),
        lambda c: c["provider"].pop("security_group"),
    ],
)
def test_an_open_security_group_is_caught(tmp_path, change):
    config = yaml.safe_load(CLUSTER.read_text())
    change(config)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    assert _ingress_problems(check_cluster_config(changed))  # still a valid Ray config, but not a safe one
