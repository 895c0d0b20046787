"""Bounded memory of the serving process: Arrow allocates from the C library's malloc once `serving` is
imported, and the archive's churn (a Parquet file per step, compactions) then leaves RSS flat.

Both run in a fresh interpreter: Arrow chooses its allocator once, when pyarrow is first imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"} | env
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return out.stdout.strip()


def test_serving_makes_malloc_arrows_pool_unless_the_user_chose_one() -> None:
    code = "import serving, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    assert _python(code) == "system"
    assert _python(code, ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"


def test_archive_churn_leaves_rss_flat(tmp_path: Path) -> None:
    """2,000 steps of 207 sensors appended one by one, the open day compacted every 48 files as the ingest
    service does: RSS over the second thousand grows by well under the 27 MB it grew with mimalloc (0.5 MB with malloc)."""
    code = f"""
        import json
        import numpy as np
        import serving
        from serving.memory import rss_mb
        from stream.archive import Archive
        from stream.simulate import simulated_network
        from stream.window import SealedStep

        net = simulated_network(207, step_ms=300_000)
        archive = Archive({str(tmp_path)!r}, net)
        rng = np.random.default_rng(0)
        shape = (net.n_sensors, net.n_features)
        rss = {{}}
        for i in range(2_000):
            step = SealedStep(1_767_225_600_000 + i * net.step_ms, rng.random(shape, np.float32),
                              np.ones(shape, np.uint8), net.n_sensors)
            archive.append([step])
            if archive.needs_compaction():
                archive.compact()
            if i + 1 in (1_000, 2_000):
                rss[i + 1] = rss_mb()
        print(json.dumps(rss))
    """
    rss = json.loads(_python(code))
    growth = rss["2000"] - rss["1000"]
    assert growth < 5.0, f"RSS grew {growth:.1f} MB over steps 1,000-2,000 ({rss})"
