"""What does `edgepack freeze` give: executable size, cold start to the first answer, per-query latency of the
executable against the runtime in Python. Same bundle, same queries, same thread count.

    python benchmarks/freeze_report.py [BUNDLE] [--starts N] [--runs N] [--rounds N] [--threads N] [--out PREFIX]

- freezes BUNDLE (default bundles/clinc-int8) into a temporary folder with edgepack.freeze, timing it;
- copies the executable alone into an empty folder and starts it --starts times, each a fresh process with a
  minimal environment (PATH=/usr/bin:/bin, HOME=that folder), one query as its argument, timing from spawn to
  its first JSON line; alternated with the same query through `python -m edgepack_runtime.cli classify`
  (the runtime in Python, from this interpreter's environment);
- per-query latency: `EXE --bench --json` against `python -m edgepack_runtime.cli bench --json`, both the
  runtime's own edgepack_runtime.bench (batch 1, tokenization included, its sample queries), alternated for
  --rounds rounds; medians over the rounds.
The OS page cache is warm (the executable was just written and nothing drops caches); each start of the
executable still unpacks its archive to a fresh temporary folder. Writes PREFIX.json and the `freeze`
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from edgepack.freeze import BANNED, freeze

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_md import cpu_description, write_section  # noqa: E402

QUERY = "what is the pin number for my account?"
SIZE_GOAL_MB, START_GOAL_S = 80.0, 1.5


def first_answer_seconds(command: list[str], cwd: Path, env: dict[str, str] | None) -> float:
    """Seconds from spawning `command` to reading its first output line (which must be a JSON answer)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    seconds = time.perf_counter() - start
    _, err = process.communicate(timeout=120)
    if process.returncode != 0 or "label" not in json.loads(line):
        raise RuntimeError(
            f"{command[0]} failed ({process.returncode}): {err.decode(errors='replace')[-500:]}"
        )
    return seconds


def cold_starts(exe: Path, bundle: Path, starts: int) -> dict[str, list[float]]:
    """First-answer times of the executable and of the runtime in Python, alternated, fresh processes."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(exe.parent)}
    python = [sys.executable, "-m", "edgepack_runtime.cli", "classify", str(bundle.resolve()), QUERY]
    times: dict[str, list[float]] = {"executable": [], "python": []}
    for _ in range(starts):
        times["executable"].append(first_answer_seconds([str(exe), QUERY], exe.parent, env))
        times["python"].append(first_answer_seconds(python, ROOT, None))
    return times


def bench_json(command: list[str]) -> dict[str, Any]:
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return dict(json.loads(out.stdout))


def latencies(
    exe: Path, bundle: Path, runs: int, rounds: int, threads: int
) -> dict[str, list[dict[str, Any]]]:
    """edgepack_runtime.bench results of the executable and of the runtime in Python, alternated."""
    options = ["--json", "--runs", str(runs), "--warmup", "50", "--threads", str(threads)]
    python = [sys.executable, "-m", "edgepack_runtime.cli", "bench", str(bundle), *options]
    results: dict[str, list[dict[str, Any]]] = {"executable": [], "python": []}
    for _ in range(rounds):
        results["executable"].append(bench_json([str(exe), "--bench", *options]))
        results["python"].append(bench_json(python))
    return results


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def latency_summary(results: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over rounds of each round's p50 / p90 / mean latency and throughput."""
    lat = [r["latency_batch1"] for r in results]
    return {
        "p50_ms": statistics.median(x["p50_ms"] for x in lat),
        "p90_ms": statistics.median(x["p90_ms"] for x in lat),
        "mean_ms": statistics.median(x["mean_ms"] for x in lat),
        "texts_per_s": statistics.median(r["throughput"]["texts_per_s"] for r in results),
    }


def markdown(report: dict[str, Any]) -> str:
    size, start, lat = report["size"], report["cold_start"], report["latency"]
    exe_lat, py_lat = lat["executable"], lat["python"]
    env = report["environment"]
    load = env["load_average_1min"]
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    lines = [
        f"### Single-file executable: `{report['bundle']}` (`edgepack freeze`, PyInstaller {report['pyinstaller']})",
        "",
        f"Froze in {report['freeze_seconds']:.0f} s. Inside: {', '.join(report['packages'])} and the Python "
        f"{report['environment']['python']} standard library; the archive's table of contents holds none of "
        f"{', '.join(report['banned_checked'][:6])}, ... ({len(report['banned_checked'])} checked).",
        "",
        "| measure | executable | runtime in Python | goal |",
        "| --- | ---: | ---: | --- |",
        f"| size | {size['executable_mb']:.1f} MB (bundle {size['bundle_mb']:.1f} MB of it) | bundle "
        f"{size['bundle_mb']:.1f} MB + an environment | <= {SIZE_GOAL_MB:.0f} MB: "
        f"{met(size['executable_mb'] <= SIZE_GOAL_MB)} |",
        f"| start to first answer, median of {start['starts']} (min-max) | "
        f"{start['executable']['median_s']:.2f} s ({start['executable']['min_s']:.2f}-"
        f"{start['executable']['max_s']:.2f}) | {start['python']['median_s']:.2f} s "
        f"({start['python']['min_s']:.2f}-{start['python']['max_s']:.2f}) | < {START_GOAL_S} s: "
        f"{met(start['executable']['median_s'] < START_GOAL_S)} |",
        f"| latency per query, p50 | {exe_lat['p50_ms']:.3f} ms | {py_lat['p50_ms']:.3f} ms | "
        f"ratio {lat['ratio_p50']:.3f} |",
        f"| latency per query, p90 | {exe_lat['p90_ms']:.3f} ms | {py_lat['p90_ms']:.3f} ms | |",
        f"| throughput (batch {lat['batch_size']}) | {exe_lat['texts_per_s']:.0f} texts/s | "
        f"{py_lat['texts_per_s']:.0f} texts/s | |",
        "",
        f"Start: a fresh process each time, spawn to first JSON line for one query, warm OS page cache (the "
        "executable was just written; caches not dropped), the executable copied alone into an empty folder and "
        "run with PATH=/usr/bin:/bin and HOME only; it unpacks its archive to a new temporary folder and verifies "
        "the bundle on every start. Runtime in Python: `python -m edgepack_runtime.cli classify` in the build "
        f"venv, alternated with the executable. Latency: edgepack_runtime.bench in both (`EXE --bench` vs "
        f"`edgepack-run bench`), {lat['runs']} timed batch-1 calls after 50 warm-up, {report['threads']} "
        f"thread(s), sample queries, tokenization included; medians over {lat['rounds']} alternated rounds.",
        "",
        f"CPU: {env['cpu']}; onnxruntime {env['onnxruntime']}, tokenizers {env['tokenizers']}, "
        f"numpy {env['numpy']}. Machine load (1-minute average): {load['before']:.2f} before the run, "
        f"{load['after']:.2f} after it (this script adds about 1; more means other jobs shared the 2 cores).",
    ]
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    result = freeze(args.bundle, work / "dist" / args.bundle.resolve().name, progress=print)
    alone = work / "empty"
    alone.mkdir()
    exe = Path(shutil.copy2(result.path, alone / result.path.name))
    print(f"cold starts ({args.starts} each) ...")
    starts = cold_starts(exe, args.bundle, args.starts)
    print(f"latency ({args.rounds} rounds of {args.runs} calls each) ...")
    lat = latencies(exe, args.bundle, args.runs, args.rounds, args.threads)
    exe_lat, py_lat = latency_summary(lat["executable"]), latency_summary(lat["python"])
    bundle_bytes = sum(p.stat().st_size for p in args.bundle.iterdir())
    return {
        "bundle": args.bundle.resolve().name,
        "path": str(args.bundle),
        "pyinstaller": version("pyinstaller"),
        "freeze_seconds": result.seconds,
        "packages": list(result.packages),
        "archive_entries": result.entries,
        "banned_checked": list(BANNED),
        "threads": args.threads,
        "size": {"executable_mb": result.size_bytes / 1e6, "bundle_mb": bundle_bytes / 1e6},
        "cold_start": {
            "starts": args.starts,
            "page_cache": "warm",
            "query": QUERY,
            **{name: summary(values) | {"runs_s": values} for name, values in starts.items()},
        },
        "latency": {
            "runs": args.runs,
            "rounds": args.rounds,
            "batch_size": lat["executable"][0]["throughput"]["batch_size"],
            "executable": exe_lat,
            "python": py_lat,
            "ratio_p50": exe_lat["p50_ms"] / py_lat["p50_ms"],
        },
        "environment": {
            "cpu": cpu_description(),
            "python": platform.python_version(),
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
            **{name: version(name) for name in ("onnxruntime", "tokenizers", "numpy")},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", default=ROOT / "bundles" / "clinc-int8", type=Path)
    parser.add_argument("--starts", type=int, default=10, help="cold starts of each (fresh processes)")
    parser.add_argument("--runs", type=int, default=1000, help="timed batch-1 calls per latency round")
    parser.add_argument("--rounds", type=int, default=3, help="alternated latency rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "freeze")
    args = parser.parse_args()
    if args.starts < 1 or args.runs < 2 or args.rounds < 1 or args.threads < 0:
        parser.error("--starts and --rounds must be >= 1, --runs >= 2, --threads >= 0")
    with tempfile.TemporaryDirectory(prefix="freeze-report-") as tmp:
        report = measure(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    snippet = markdown(report)
    write_section("freeze", snippet)
    print(snippet)
    print(f"wrote {args.out.with_suffix('.json')} and the freeze section of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
