"""One markdown table of several bench/load.py results (e.g. before/after a server change).

.venv/bin/python bench/load_summary.py bench/results/load-100k-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    print(
        "| file | index | serve flags | users | queries/s | p50 ms | p99 ms | p99/p50 | errors | RSS start / max MB "
        "| served recall@10 (queries checked) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for name in sys.argv[1:]:
        result = json.loads(Path(name).read_text())
        for case in result["cases"]:
            for level in case["levels"]:
                print(
                    f"| {Path(name).stem} | {case['index']['type']} | `{result['serve_args'] or '-'}` | {level['users']} "
                    f"| {level['queries_per_s']:.1f} | {level['p50_ms']:.1f} | {level['p99_ms']:.1f} "
                    f"| {level['p99_ms'] / level['p50_ms']:.2f} | {level['errors']} "
                    f"| {level['rss_start_mb']:.0f} / {level['rss_max_mb']:.0f} | {_recall(level)} |"
                )


def _recall(level: dict) -> str:
    """The server's running check (index/served_recall.py), where the run recorded it."""
    served = level.get("served_recall") or {}
    if "recall_at_10" not in served:
        return "-" if not served else "exact index"
    return f"{served['recall_at_10']:.3f} ({served['measured']})"


if __name__ == "__main__":
    main()
