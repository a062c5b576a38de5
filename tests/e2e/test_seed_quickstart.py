"""The seed README's quick start, with culm imports, runs unchanged and prints FINISHED states."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SEED = textwrap.dedent(
    """
    import time

    from culm import api
    from culm.builder import *
    from culm import Runtime as BambooDjangoRuntime

    start = EmptyStartEvent()
    act = ServiceActivity(component_code="example_component")
    end = EmptyEndEvent()

    start.extend(act).extend(end)

    pipeline = builder.build_tree(start)

    runtime = BambooDjangoRuntime()

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    time.sleep(1)

    result = api.get_pipeline_states(runtime=runtime, root_id=pipeline["id"])

    print(result.data)
    runtime.close()
    """
)


def test_seed_quick_start_prints_the_finished_state_tree(tmp_path: Path) -> None:
    script = tmp_path / "seed.py"
    script.write_text(SEED)
    env = {"CULM_DATABASE_URL": f"sqlite:///{tmp_path}/seed.db", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = eval(out.stdout.strip(), {"datetime": __import__("datetime")})  # noqa: S307 - our own output
    (root_id, root), = data.items()
    assert root["state"] == "FINISHED"
    assert root["root_id:"] == root_id
    assert len(root["children"]) == 3
    assert {c["state"] for c in root["children"].values()} == {"FINISHED"}
