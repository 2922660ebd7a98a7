"""scripts/devservices.py: `status` works while the suite runs (it never starts or stops anything)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "devservices.py"


def test_status_reports_both_services():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "status"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.lower()
    assert "postgres" in out
    assert "redis" in out


def test_services_env_round_trip_and_redaction(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("devservices_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses resolve annotations via sys.modules
    spec.loader.exec_module(mod)  # importing has no side effects

    paths = mod.Paths(tmp_path)
    results = [
        mod.ServiceResult("postgres", "DATABASE_URL", "postgresql://u:pw@db:5432/x", "env", "from env"),
        mod.ServiceResult("redis", "REDIS_URL", "redis://127.0.0.1:63799/0", "embedded", "started"),
    ]
    mod.write_services_env(paths, results)
    env = mod.services_environ(paths, {"OTHER": "1"})
    assert env == {
        "OTHER": "1",
        "DATABASE_URL": "postgresql://u:pw@db:5432/x",
        "REDIS_URL": "redis://127.0.0.1:63799/0",
    }
    assert "pw" not in results[0].describe()
    assert results[1].describe() == "devservices: redis embedded at 127.0.0.1:63799 (started)"
    assert results[1].started_here and not results[0].started_here


def test_access_is_granted_before_initdb_for_a_checkout_under_a_0700_folder(tmp_path, monkeypatch):
    # given a checkout inside a folder only its owner may enter (as root's home is), and PostgreSQL
    # run as another user
    spec = importlib.util.spec_from_file_location("devservices_access_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    home = tmp_path / "home"
    checkout = home / "otb"
    checkout.mkdir(parents=True)
    home.chmod(0o700)
    paths = mod.Paths(checkout)
    other = mod.RunAs(name="nobody", uid=65534, gid=65534)
    # when access is prepared (ensure_postgres does it before initdb, not only before a start)
    mod.pg_grant_access(paths, other)
    # then the other user can cross every folder down to where the data directory will be created
    for folder in (home, checkout, paths.var):
        assert folder.stat().st_mode & 0o001, folder
