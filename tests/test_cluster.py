from pathlib import Path

import pytest
import yaml

from scssl.cli import main
from scssl.settings import ConfigError
from scssl.tune.cluster import check_cluster_config

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


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
