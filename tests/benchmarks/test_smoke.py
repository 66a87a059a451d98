"""Every script in ``benchmarks/`` runs end to end on tiny data (its ``--smoke`` setting) and writes its JSON, so
that no benchmark can break unnoticed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py"))


def test_every_benchmark_script_is_smoke_tested():
    assert set(SCRIPTS) == set(EXPECTED_ROWS)


EXPECTED_ROWS = {  # what each script's JSON must hold at least
    "evaluation.py": lambda r: r["cells"] > 0 and 0 <= r["max_abs_diff"] < 1 and "scib_seconds_3k" in r,
    "hpo_efficiency.py": lambda r: r["grid_size"] == 1 and len(r["ratio"]) == 1,
    "scale.py": lambda r: [(row["cells"], row["data"], row["trials"]) for row in r] == [
        (3000, "memory", 1), (3000, "memory", 2), (3000, "store", 1), (3000, "store", 2)]
    and all(row["prep_peak_rss_gb"] > 0 and row["cells_per_s"] > 0 for row in r),
    "scib_versions.py": lambda r: len({row["embedding"] for row in r["rows"]}) == 2 and r["largest_difference"] == 0,
    "train_throughput.py": lambda r: {row["method"] for row in r} >= {"simclr", "mae", "clear", "claire", "concerto",
                                                                       "scclip"} and all(row["cells_per_s"] > 0 for row in r),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_the_benchmark_runs_on_tiny_data(script, tmp_path):
    out = tmp_path / "figures.json"
    subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke", "--json", str(out)], check=True,
                   cwd=tmp_path, timeout=900)
    assert EXPECTED_ROWS[script](json.loads(out.read_text()))
