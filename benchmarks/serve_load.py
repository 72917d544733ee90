"""Load test of `edgepack-run serve` on 127.0.0.1, and the runtime's batch throughput: JSON + a RESULTS.md section.

Serving: starts the real server (a subprocess, `--port 0`), then at each concurrency level (default 1, 8 and
32 clients, each a keep-alive HTTP/1.1 connection sending one query after the other) sends a fixed number of
POST /classify requests or stops at a time limit, whichever comes first. Every answer is checked against the
label `Classifier.predict` gives for that query in this process: a non-200, a broken connection, a timeout or
a different label is an error (the goal is 0). Reports p50 / p90 / p99 latency (request sent to answer
read), requests/s, errors, and the server's resident memory (VmRSS, its worker processes included) after
warm-up and after each level: it must not grow without bound.

Batch throughput: texts/s through `predict_batch` at batch 1 and at batch 32 on one thread, tokenization included
(TOKENIZERS_PARALLELISM=false: no tokenizer threads beside it; interleaved rounds, medians), on the CLINC test
split, and the label agreement of batch 32 with batch 1 over the whole split; beside it, the same graph batched
as it is, on the raw session (the runtime runs dynamic INT8 one text at a time, so that row is what plain
batching would give, and how many labels it would change; for bundles that batch, static-integer INT8 or float,
it is the graph without the runtime's Python work), also at other batch sizes (--sweep: where ONNX Runtime's
kernels stop gaining); and the bound no batching can beat: the graph's matrix-product arithmetic per text at this
CPU's attainable rates (`edgepack.bench.floor`, in the build environment with the bench extra), against the
batch-1 time per text.

    python benchmarks/serve_load.py bundles/clinc-int8          # then look at benchmarks/RESULTS.md
    python benchmarks/serve_load.py --requests 300 --time-limit 20 --json /tmp/s.json --markdown /tmp/s.md

The load generator runs on the same machine as the server (2 cores here): the figures include its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from edgepack_runtime import Classifier, bench
from edgepack_runtime.classifier import feeds, limit_tokenizer_threads
from edgepack_runtime.data import load_labeled
from edgepack_runtime.serve_process import RunningServer, ServerStartError, running_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_md import cpu_description, write_section  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "clinc150"


# -- the server -----------------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory of the server process `pid` and its worker processes, MB (Linux /proc)."""
    pids, total = [pid], 0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


# -- the clients ----------------------------------------------------------------------------------------------


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, body: bytes
) -> tuple[int, bytes]:
    head = f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    status = int(status_line.split()[1]) if status_line else 0
    return status, await reader.readexactly(length)


async def _client(
    server: RunningServer,
    work: asyncio.Queue[tuple[str, str]],
    stop_at: float,
    latencies: list[float],
    errors: list[str],
    timeout: float,
) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        while time.monotonic() < stop_at:
            try:
                text, expected = work.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = json.dumps({"text": text, "top_k": 1}).encode()
            start = time.perf_counter()
            try:
                status, payload = await asyncio.wait_for(
                    _exchange(reader, writer, server.host, body), timeout
                )
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as err:
                errors.append(f"{type(err).__name__}: {err}")
                writer.close()
                reader, writer = await asyncio.open_connection(server.host, server.port)
                continue
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors.append(f"HTTP {status}: {payload[:200]!r}")
            elif json.loads(payload)["label"] != expected:
                errors.append(f"label for {text!r} differs from Classifier.predict")
    finally:
        writer.close()


async def _level(
    server: RunningServer,
    queries: list[tuple[str, str]],
    clients: int,
    requests: int,
    limit: float,
    timeout: float,
) -> dict[str, Any]:
    work: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for i in range(requests):
        work.put_nowait(queries[i % len(queries)])
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    stop_at = time.monotonic() + limit
    await asyncio.gather(
        *(_client(server, work, stop_at, latencies, errors, timeout) for _ in range(clients))
    )
    seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "requests": len(latencies),
        "planned": requests,
        "stopped_by_time_limit": work.qsize() > 0,
        "seconds": seconds,
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": len(errors),
        "first_errors": errors[:5],
    }


def load_test(args: argparse.Namespace, clf: Classifier, texts: list[str]) -> dict[str, Any]:
    distinct = list(dict.fromkeys(texts))[: max(args.requests, 1)]
    queries = [(text, clf.predict(text).label) for text in distinct]
    options = ["--threads", str(args.server_threads), "--workers", str(args.workers), "--max-texts", "64"]
    with running_server(args.bundle, *options, timeout=args.start_timeout) as server:
        asyncio.run(_level(server, queries, 4, 50, args.time_limit, args.timeout))  # warm-up, not reported
        rss = [rss_mb(server.process.pid)]
        levels = []
        for clients in args.clients:
            level = asyncio.run(
                _level(server, queries, clients, args.requests, args.time_limit, args.timeout)
            )
            rss.append(rss_mb(server.process.pid))
            level["rss_after_mb"] = rss[-1]
            levels.append(level)
            print(
                f"  {clients:>3} clients: {level['requests_per_s']:7.1f} req/s, p50 {level['p50_ms']:.2f} ms, "
                f"p99 {level['p99_ms']:.2f} ms, errors {level['errors']}, server RSS {rss[-1]:.1f} MB",
                file=sys.stderr,
            )
        code = server.stop()
    return {
        "server": {"threads": args.server_threads, "workers": args.workers, "exit_code_on_sigterm": code},
        "rss_mb": {"after_warmup": rss[0], "after_each_level": rss[1:], "growth": rss[-1] - rss[0]},
        "levels": levels,
        "errors": sum(level["errors"] for level in levels),
    }


# -- batch throughput ---------------------------------------------------------------------------------------


def _raw_batches(clf: Classifier, texts: list[str], batch_size: int) -> np.ndarray:
    """Labels (argmax) from the bundle's graph run on padded batches as it is (dynamic INT8: one activation
    scale per batch)."""
    rows = clf._encode(texts)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    labels = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits = clf._session.run(["logits"], feeds([rows[i] for i in chunk], clf._types, clf._pad_id))[0]
        labels[chunk] = np.asarray(logits).argmax(axis=1)
    return labels


def batch_throughput(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    limit_tokenizer_threads(1)  # one thread: the tokenizers library's own pool would add the other cores
    clf = Classifier.load(args.bundle, threads=1)
    rates: dict[str, list[float]] = {"batch 1": [], f"batch {args.batch_size}": []}
    sweep: dict[int, list[float]] = {size: [] for size in sorted({*args.sweep, args.batch_size})}
    for _ in range(args.rounds):  # interleaved, so load changes hit every contender alike
        for name, size in (("batch 1", 1), (f"batch {args.batch_size}", args.batch_size)):
            measured = bench.batch_throughput(
                lambda items, bs: clf.predict_batch(items, batch_size=bs), texts, size, args.batch_texts
            )
            rates[name].append(measured["texts_per_s"])
        for size, values in sweep.items():
            raw = bench.batch_throughput(
                lambda items, bs: _raw_batches(clf, items, bs), texts, size, args.batch_texts
            )
            values.append(raw["texts_per_s"])
    rates["graph as is"] = sweep[args.batch_size]
    one = [clf.predict(text) for text in texts]
    many = clf.predict_batch(texts, batch_size=args.batch_size)
    raw_labels = _raw_batches(clf, texts, args.batch_size)
    alone_argmax = np.array([clf.labels.index(p.top_k[0][0]) for p in one])
    pairs = list(zip(one, many, strict=True))
    apart = [
        abs(a.oos_score - b.oos_score) / abs(a.oos_score) for a, b in pairs if a.oos_score and b.oos_score
    ]
    median = {name: statistics.median(values) for name, values in rates.items()}
    bound = arithmetic_bound(clf, texts, median["batch 1"])
    return {
        "texts": len(texts),
        "threads": 1,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "batch_mode": clf.batch_mode,
        "batch_invariant": clf.batch_invariant,
        "texts_per_s": median,
        "all_rounds": rates,
        "speedup": median[f"batch {args.batch_size}"] / median["batch 1"],
        "labels_identical": sum(a.label == b.label for a, b in pairs),
        "rejections_identical": sum(a.rejected == b.rejected for a, b in pairs),
        "probabilities_identical": sum(a.top_k == b.top_k for a, b in pairs),
        "answers_identical": sum(a == b for a, b in pairs),
        "oos_score_max_relative_difference": max(apart, default=0.0),
        "graph_as_is": {
            "speedup": median["graph as is"] / median["batch 1"],
            "argmax_identical": int((raw_labels == alone_argmax).sum()),
            # the graph alone at other batch sizes: texts/s and the ratio to the runtime's batch-1 rate
            "by_batch_size": {
                size: {"texts_per_s": rate, "speedup": rate / median["batch 1"]}
                for size, rate in ((size, statistics.median(values)) for size, values in sweep.items())
            },
        },
        "arithmetic_bound": bound,
    }


def arithmetic_bound(clf: Classifier, texts: list[str], batch_1_per_s: float) -> dict[str, Any] | None:
    """The mean per-text time of the graph's matrix products at this CPU's attainable one-thread GEMM rates:
    batching shares everything else, never the arithmetic, so batch-1 time / this is the most any batching
    can give. None without the build package's bench extra (edgepack.bench.floor)."""
    try:
        from edgepack.bench.floor import gemm_rates, profile_graph
    except ImportError:
        return None
    rows = clf._encode(texts)
    rates = gemm_rates(1)
    profiles = profile_graph((clf.path / "model.onnx").read_bytes(), clf.manifest, rows, 1)
    floor_ms = statistics.fmean(profiles[len(ids)].floor_ms(rates) for ids in rows)
    batch_1_ms = 1e3 / batch_1_per_s
    return {
        "int8_gmacs_per_s": rates.int8 / 1e9,
        "fp32_gmacs_per_s": rates.fp32 / 1e9,
        "floor_ms_per_text": floor_ms,
        "batch_1_ms_per_text": batch_1_ms,
        "most_any_batching_gives": batch_1_ms / floor_ms,
    }


# -- report -------------------------------------------------------------------------------------------------


def _graph_as_is(batch: dict[str, Any]) -> str:
    changed = batch["texts"] - batch["graph_as_is"]["argmax_identical"]
    if batch.get("batch_invariant"):
        return (
            f"The graph alone in the same batches (`session.run` without the runtime's Python work): "
            f"{batch['graph_as_is']['speedup']:.2f}x the runtime's batch-1 rate, the argmax label of {changed} "
            f"of {batch['texts']} texts changed."
        )
    return (
        f"For comparison, the graph batched as it is (one activation scale per batch, which is why the runtime "
        f"does not do it): {batch['graph_as_is']['speedup']:.2f}x, with the argmax label of {changed} of "
        f"{batch['texts']} texts changed."
    )


def _sweep(batch: dict[str, Any]) -> str:
    sizes = batch["graph_as_is"]["by_batch_size"]
    listed = ", ".join(
        f"batch {size} {row['texts_per_s']:.0f} texts/s ({row['speedup']:.2f}x)"
        for size, row in sizes.items()
    )
    size, best = max(sizes.items(), key=lambda item: item[1]["speedup"])
    return (
        f"The graph alone at other batch sizes (texts sorted by length; x: against the runtime's batch-1 rate): "
        f"{listed}. The best, batch {size}, is **{best['speedup']:.2f}x**: what ONNX Runtime's kernels give "
        "this graph at any of these batch sizes."
    )


def _why_not_2x(batch: dict[str, Any]) -> str:
    reached = f"{batch['graph_as_is']['speedup']:.2f}x"
    if batch.get("batch_invariant"):
        best = max(row["speedup"] for row in batch["graph_as_is"]["by_batch_size"].values())
        return (
            f"The graph alone in the same batches reaches only {reached}, and {best:.2f}x at its best batch "
            'size: no Python work the runtime could save would close it (RESULTS.md, "Session 16": where a '
            "batch's time goes)."
        )
    return (
        f"Even the graph batched as it is (texts sorted by length, one scale per batch) reaches only {reached} "
        "here. An exact per-text rewrite of the graph (each text quantized with its own scale inside a batch) was "
        "built in session 7 and measured at 1.02-1.4x on the 4-layer graph of the AVX2 VM, and at 1.01x on the "
        '2-layer default on the Zen 5 VM in session 13 (RESULTS.md, "Session 13"): not kept. Static-integer INT8 '
        '(RESULTS.md, "Session 16") batches with the answers of single texts.'
    )


def markdown(report: dict[str, Any]) -> str:
    serve, batch, machine = report.get("serve"), report.get("batch"), report["machine"]
    out = [f"## Serving `{report['bundle']}` over HTTP (`benchmarks/serve_load.py`)", ""]
    if serve:
        rss = serve["rss_mb"]
        out += [
            f"`edgepack-run serve`, {serve['server']['workers']} worker(s) x {serve['server']['threads']} "
            f"model thread(s), on 127.0.0.1; the load generator (asyncio, one keep-alive connection per client, "
            f'`{{"text": ...}}` requests of CLINC test queries) on the same machine. Every answer\'s label '
            "checked against `Classifier.predict`.",
            "",
            "| clients | requests | req/s | p50 ms | p90 ms | p99 ms | errors | server RSS after (MB) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for level in serve["levels"]:
            cut = " (time limit)" if level["stopped_by_time_limit"] else ""
            out.append(
                f"| {level['clients']} | {level['requests']}{cut} | {level['requests_per_s']:.1f} | "
                f"{level['p50_ms']:.2f} | {level['p90_ms']:.2f} | {level['p99_ms']:.2f} | {level['errors']} | "
                f"{level['rss_after_mb']:.1f} |"
            )
        out += [
            "",
            f"Errors: {serve['errors']}. Server RSS after warm-up {rss['after_warmup']:.1f} MB, at the end "
            f"{rss['after_each_level'][-1]:.1f} MB (growth {rss['growth']:+.1f} MB). SIGTERM at the end: exit "
            f"code {serve['server']['exit_code_on_sigterm']}.",
            "",
        ]
    if batch:
        size, rates = batch["batch_size"], batch["texts_per_s"]
        out += [
            f"Batch throughput, one thread, `predict_batch` on {batch['texts']} CLINC test queries (medians of "
            f"{batch['rounds']} interleaved rounds): batch 1 {rates['batch 1']:.0f} texts/s, batch {size} "
            f"{rates[f'batch {size}']:.0f} texts/s: **{batch['speedup']:.2f}x**; batch mode: "
            f"{batch['batch_mode']}. Batch {size} vs batch 1 over the whole split: labels identical for "
            f"{batch['labels_identical']} of {batch['texts']}, out-of-scope rejections for "
            f"{batch['rejections_identical']}, probabilities (top_k) bit for bit for "
            f"{batch['probabilities_identical']}, whole answers (the out-of-scope score included) for "
            f"{batch['answers_identical']}; the out-of-scope scores differ by at most "
            f"{batch['oos_score_max_relative_difference']:.1e} of their value.",
            "",
            _graph_as_is(batch),
            "",
            _sweep(batch),
            "",
            f"Issue 14's goal, 2x the batch-1 rate at batch {size} with identical labels: "
            + (
                "met."
                if batch["speedup"] >= 2 and batch["labels_identical"] == batch["texts"]
                else "missed. "
            )
            + ("" if batch["speedup"] >= 2 else _why_not_2x(batch)),
            "",
        ]
        if bound := batch.get("arithmetic_bound"):
            out += [
                f"The bound no batching can beat: the graph's matrix products alone, at the best one-thread "
                f"rates ONNX Runtime's kernels reach on this CPU (INT8 {bound['int8_gmacs_per_s']:.1f}, FP32 {bound['fp32_gmacs_per_s']:.1f} "
                f"GMAC/s, `edgepack.bench.floor`), take {bound['floor_ms_per_text']:.2f} ms per text on average; "
                f"batch 1 takes {bound['batch_1_ms_per_text']:.2f} ms. Batching shares the per-call costs, not "
                f"the arithmetic, so **{bound['most_any_batching_gives']:.2f}x** is the most any batching of "
                "this graph can give on this CPU and thread count.",
                "",
            ]
    out.append(
        f"Machine: {machine['cpu']}; Python {machine['python']}; onnxruntime {machine['onnxruntime']}, "
        f"uvicorn {machine['uvicorn']}, starlette {machine['starlette']}. Load average (1 min) "
        f"{machine['load_before']:.2f} before, {machine['load_after']:.2f} after (this script adds about 2)."
    )
    return "\n".join(out)


def _version(name: str) -> str:
    try:
        return version(name)
    except Exception:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", default=ROOT / "bundles" / "clinc-int8", type=Path)
    parser.add_argument(
        "--data", type=Path, default=DATA, help="CLINC150 folder (queries and the test split)"
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=3000, help="requests per level (then it stops)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per level at most")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before one request is an error")
    parser.add_argument("--server-threads", type=int, default=1, help="the server's --threads")
    parser.add_argument("--workers", type=int, default=1, help="the server's --workers")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-texts", type=int, default=2000, help="texts per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=[1, 8, 128, 512],
        help="batch sizes the graph alone is also measured at (besides --batch-size)",
    )
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    parser.add_argument("--markdown", type=Path, help="write the section here instead of into RESULTS.md")
    args = parser.parse_args()
    if (
        min([*args.clients, *args.sweep, args.requests, args.rounds, args.batch_size]) < 1
        or args.time_limit <= 0
    ):
        parser.error(
            "--clients, --sweep, --requests, --rounds and --batch-size must be >= 1, --time-limit > 0"
        )
    texts = [text for text, _ in load_labeled(args.data, split="test")] if args.data.exists() else []
    texts = texts or list(bench.SAMPLE_QUERIES)
    load_before = os.getloadavg()[0]
    report: dict[str, Any] = {"bundle": args.bundle.name}
    if not args.skip_serve:
        print(f"load test of {args.bundle} ...", file=sys.stderr)
        try:
            report["serve"] = load_test(args, Classifier.load(args.bundle, threads=1), texts)
        except ServerStartError as err:
            raise SystemExit(str(err)) from None
    if not args.skip_batch:
        print("batch throughput ...", file=sys.stderr)
        report["batch"] = batch_throughput(args, texts)
    report["machine"] = {
        "cpu": cpu_description(),
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "uvicorn": _version("uvicorn"),
        "starlette": _version("starlette"),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    snippet = markdown(report)
    if args.markdown:
        args.markdown.write_text(snippet + "\n", encoding="utf-8")
    else:
        write_section("serve_load", snippet)
    print(snippet)
    where = args.markdown or "the serve_load section of benchmarks/RESULTS.md"
    print(f"wrote {args.json} and {where}", file=sys.stderr)
    failed = report.get("serve", {}).get("errors", 0)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
