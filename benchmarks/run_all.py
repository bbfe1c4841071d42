"""Run every benchmark, store its JSON lines, and regenerate the README tables from them.

Each ``benchmarks/<name>.py`` prints JSON lines on stdout and defines
``markdown(records) -> str``. Results go to ``benchmarks/results/<name>.jsonl``; the README
section between ``<!-- bench:<name> -->`` and ``<!-- /bench:<name> -->`` is replaced by that
table. ``python benchmarks/run_all.py NAME ...`` runs only those; ``--readme-only`` rebuilds
the tables from the stored results without running anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
README = ROOT / "README.md"


def benchmark_names() -> list[str]:
    skip = {"run_all", "common"}
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in skip)


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str) -> list[dict]:
    print(f"== {name}", file=sys.stderr, flush=True)
    proc = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py")], capture_output=True, text=True, check=False
    )
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        raise SystemExit(f"benchmark {name} failed with exit code {proc.returncode}")
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8"
    )
    return records


def update_readme(name: str, records: list[dict]) -> None:
    module = load_module(name)
    if not hasattr(module, "markdown") or not README.exists():
        return
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(
        rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S
    )
    if not pattern.search(text):
        return
    table = module.markdown(records).rstrip() + "\n"
    README.write_text(pattern.sub(lambda m: m.group(1) + table + m.group(2), text), "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--readme-only", action="store_true", help="only rebuild README tables")
    args = parser.parse_args()
    names = args.names or benchmark_names()
    unknown = sorted(set(names) - set(benchmark_names()))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; available: {benchmark_names()}")
    for name in names:
        if args.readme_only:
            path = RESULTS / f"{name}.jsonl"
            if not path.exists():
                continue
            records = [json.loads(line) for line in path.read_text().splitlines() if line]
        else:
            records = run(name)
        update_readme(name, records)


if __name__ == "__main__":
    main()
