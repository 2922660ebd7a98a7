"""The apps' dependency contract ([tool.importlinter] in pyproject.toml, docs/architecture.md) holds,
and it catches a forbidden import: a copy of the tree with one lower layer importing a higher one
breaks it, naming the import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("config", "frontend", "fleet", "provisioning", "otbcompat", "bench", "netlab")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    python_path = f"{tree}:{tree / 'agent'}:{tree / 'agent' / 'protocol'}"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": python_path},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(
            ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules")
        )
    shutil.copytree(
        ROOT / "agent", tmp_path / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contract_holds_on_the_tree(tree_copy: Path) -> None:
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def test_a_core_module_importing_provisioning_breaks_the_contract(tree_copy: Path) -> None:
    # given the tree with the fleet core importing the box lifecycle (a higher layer)
    probe = tree_copy / "fleet" / "core" / "contract_probe.py"
    probe.write_text("from provisioning.services.lifecycle import box_claim\n\n__all__ = ['box_claim']\n")
    # when the contract is checked
    result = lint_imports(tree_copy)
    # then it fails and names the import
    assert result.returncode != 0
    assert "fleet.core is not allowed to import provisioning" in result.stdout
    assert "fleet.core.contract_probe -> provisioning.services.lifecycle" in result.stdout


def test_product_code_importing_the_benchmarks_breaks_the_contract(tree_copy: Path) -> None:
    probe = tree_copy / "fleet" / "telemetry" / "contract_probe.py"
    probe.write_text("import bench.echo\n\n__all__ = ['bench']\n")
    result = lint_imports(tree_copy)
    assert result.returncode != 0
    assert "fleet.telemetry.contract_probe -> bench.echo" in result.stdout


def test_the_gateway_importing_the_server_breaks_the_contract(tree_copy: Path) -> None:
    # given the aggregation server's gateway importing a provisioning service (Django)
    probe = tree_copy / "agent" / "otb_gateway" / "contract_probe.py"
    probe.write_text("from provisioning.services import gateway\n\n__all__ = ['gateway']\n")
    result = lint_imports(tree_copy)
    assert result.returncode != 0
    assert "otb_gateway.contract_probe -> provisioning.services" in result.stdout


def test_product_code_importing_the_gateway_breaks_the_contract(tree_copy: Path) -> None:
    probe = tree_copy / "provisioning" / "contract_probe.py"
    probe.write_text("from otb_gateway.plan import build_plan\n\n__all__ = ['build_plan']\n")
    result = lint_imports(tree_copy)
    assert result.returncode != 0
    assert "provisioning.contract_probe -> otb_gateway.plan" in result.stdout
