"""The command line and a worker's metrics endpoint work on an install without the ``web`` extra
(FastAPI, uvicorn, prometheus-client): only ``culm serve`` needs it, and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs the CLI with the web extra's packages made unimportable, as on `pip install culm`.
_WITHOUT_WEB = """
import sys
for name in ("fastapi", "starlette", "uvicorn", "prometheus_client"):
    sys.modules[name] = None  # import of it fails as if not installed
sys.argv = ["culm", *sys.argv[1:]]
from culm.cli import main
sys.exit(main())
"""


def _culm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WITHOUT_WEB, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.timeout(300)
def test_the_cli_runs_a_pipeline_without_the_web_extra(tmp_path):
    db = f"sqlite:///{tmp_path / 'culm.db'}"

    helped = _culm("--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "exit codes" in helped.stdout

    ran = _culm("run", str(REPO / "examples" / "quickstart.py"), "--db", db, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr

    listed = _culm("list", "--db", db, "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [p["state"] for p in json.loads(listed.stdout)["items"]] == ["FINISHED"]


@pytest.mark.timeout(120)
def test_culm_serve_without_the_web_extra_names_it(tmp_path):
    served = _culm("serve", "--db", f"sqlite:///{tmp_path / 'culm.db'}", cwd=tmp_path)
    assert served.returncode != 0
    assert "pip install 'culm[web]'" in served.stderr
    assert "Traceback" not in served.stderr


def test_the_worker_metrics_endpoint_imports_without_the_web_extra():
    probe = subprocess.run(
        [sys.executable, "-c", "import sys\nfor n in ('fastapi','starlette','uvicorn'): sys.modules[n] = None\n"
         "import culm.web.worker_metrics, culm.web.tokens"],
        capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
