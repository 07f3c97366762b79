"""What the autoload hook (serving without ``import hf_factor_embed``) costs.

    python benchmarks/startup.py --runs 20

* Every Python start-up: the hook module's import time (``python -X importtime -c pass``), and the wall time of
  ``python -c pass`` with the hook against ``python -S -c pass`` plus the same site-packages path (no .pth
  files at all; an upper bound on what any .pth could cost, since other .pth files go too).
* Only processes that load a model pay the rest: ``import hf_factor_embed`` after transformers' modeling code,
  done by the hook when ``transformers.modeling_utils`` loads.
Medians over --runs fresh processes. Writes benchmarks/results/startup.json and a section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quality import write_results_md  # noqa: E402


def wall(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def hook_import_us(runs: int) -> float:
    times = []
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True).stderr
        line = next((x for x in err.splitlines() if x.rstrip().endswith("hf_factor_embed_autoload")), None)
        if line is None:
            raise SystemExit("the hook did not load: install the package (pip install -e .) first")
        times.append(int(line.split("|")[1]))
    return statistics.median(times)


def plugin_import_ms(runs: int) -> float:
    code = (
        "import sys, time; sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != '_Finder'];"
        "import transformers.modeling_utils; t = time.perf_counter(); import hf_factor_embed;"
        "print((time.perf_counter() - t) * 1e3)"
    )
    values = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(runs)
    ]
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "startup.json")
    args = parser.parse_args()
    purelib = sysconfig.get_paths()["purelib"]
    result = {
        "hook_import_us": hook_import_us(args.runs),
        "python_pass_ms": 1e3 * wall([sys.executable, "-c", "pass"], args.runs),
        "python_no_site_ms": 1e3
        * wall([sys.executable, "-S", "-c", f"import sys; sys.path.append({purelib!r})"], args.runs),
        "plugin_import_after_transformers_ms": plugin_import_ms(max(3, args.runs // 4)),
        "runs": args.runs,
    }
    command = "python benchmarks/startup.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command.strip(), **result}, indent=1))
    text = "\n".join(
        [
            f"Command: `{command.strip()}` (medians over fresh processes; this machine, 2 CPU cores).",
            "",
            "| what | time |",
            "|---|---|",
            f"| hook module import, every start-up (`-X importtime`) | {result['hook_import_us']:.0f} us |",
            f"| `python -c pass` with all .pth files (hook included) | {result['python_pass_ms']:.1f} ms |",
            f"| `python -S -c pass` (no site, no .pth files at all) | {result['python_no_site_ms']:.1f} ms |",
            f"| `import hf_factor_embed` after transformers' modeling code (model-loading processes only) | "
            f"{result['plugin_import_after_transformers_ms']:.0f} ms |",
        ]
    )
    print(text)
    write_results_md(text, "startup")


if __name__ == "__main__":
    main()
