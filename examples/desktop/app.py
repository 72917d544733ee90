"""A small Tkinter app that classifies what you type with an edgepack bundle.

    python examples/desktop/app.py [BUNDLE] [--threads N] [--trace]

It needs only the standard library's tkinter and edgepack-runtime (onnxruntime, tokenizers, numpy). The pattern
to copy: Tk widgets are touched only from the Tk thread; the bundle is loaded, and every prediction runs, on one
worker thread; results come back through a queue that the Tk thread polls with `after`. Keystrokes are debounced
and each request carries a sequence number, so a result for text the user has since changed is dropped.
"""

from __future__ import annotations

import argparse
import json
import queue
import time
import tkinter as tk
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from tkinter import font, ttk
from typing import Any

from edgepack_runtime import BundleError, Classifier, Prediction

TITLE = "edgepack intent classifier"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "clinc-int8"
DEBOUNCE_MS = 150  # predict this long after the last keystroke, not on every key
POLL_MS = 30  # how often the Tk thread looks for finished work
TOP_K = 3
# One ONNX Runtime thread: a query takes about 2 ms on one core (clinc-int8). A second thread saves under a
# millisecond, invisible next to the debounce, while ORT's extra threads spin-wait on cores the UI (and every
# other app on the desktop) needs.
DEFAULT_THREADS = 1

REBUILD_HINT = "Build it with `make bundle`, or pass another: python examples/desktop/app.py BUNDLE"
GREEN, AMBER, RED, GREY, BLUE = "#1b7f3b", "#a15c00", "#b3261e", "#5f6368", "#3d6fb6"


def timed_predict(classifier: Classifier, text: str) -> tuple[Prediction, float]:
    """Runs on the worker thread: the prediction and its latency in milliseconds."""
    start = time.perf_counter()
    prediction = classifier.predict(text, top_k=TOP_K)
    return prediction, (time.perf_counter() - start) * 1000


class App:
    def __init__(self, root: tk.Tk, bundle: Path, threads: int, trace: bool) -> None:
        self.root, self.trace = root, trace
        self.classifier: Classifier | None = None
        self.seq = 0  # bumped on every edit; results for an older number are stale
        self.debounce: str | None = None
        # One worker thread: loading and predictions run there in order, never on the Tk thread.
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classifier")
        self.inbox: queue.Queue[tuple[str, int, Future[Any]]] = queue.Queue()
        self._build_widgets()
        self._show_message("Loading…", f"Verifying and loading {bundle}", GREY, "loading")
        self._run("load", 0, Classifier.load, bundle, threads=threads)
        self.root.after(POLL_MS, self._poll)

    # -- widgets (Tk thread only) -----------------------------------------------------------------------

    def _build_widgets(self) -> None:
        root = self.root
        root.title(TITLE)
        root.minsize(480, 0)
        style = ttk.Style(root)
        style.theme_use("clam")  # a flat theme Tk ships on every platform
        style.configure(
            "Score.Horizontal.TProgressbar", background=BLUE, troughcolor="#ecebe8", borderwidth=0
        )
        frame = ttk.Frame(root, padding=16)
        frame.pack(fill="both", expand=True)
        frame.columnconfigure(0, weight=1)
        ttk.Label(frame, text="Type a request:").grid(row=0, column=0, sticky="w")
        self.text = tk.StringVar()
        entry_font = font.nametofont("TkDefaultFont").copy()
        entry_font.configure(size=12)
        self.entry = ttk.Entry(frame, textvariable=self.text, width=54, font=entry_font)
        self.entry.grid(row=1, column=0, sticky="ew", pady=(4, 12))
        self.entry.focus_set()
        self.text.trace_add("write", self._on_edit)  # typing, pasting and deleting all land here

        big = font.nametofont("TkDefaultFont").copy()
        big.configure(size=18, weight="bold")
        self.intent = ttk.Label(frame, font=big)
        self.intent.grid(row=2, column=0, sticky="w")
        self.detail = ttk.Label(frame, wraplength=590, justify="left")
        self.detail.grid(row=3, column=0, sticky="w", pady=(2, 10))

        self.scores = ttk.Frame(frame)  # the top-k table, hidden while there is no prediction
        self.scores.grid(row=4, column=0, sticky="ew")
        self.scores.columnconfigure(1, weight=1)
        ttk.Label(self.scores, text=f"Top {TOP_K}", foreground=GREY).grid(row=0, column=0, sticky="w")
        self.rows: list[tuple[ttk.Label, ttk.Progressbar, ttk.Label]] = []
        for i in range(1, TOP_K + 1):
            name = ttk.Label(self.scores, width=22)  # fixed, so the bars do not jump as labels change
            bar = ttk.Progressbar(self.scores, maximum=100, style="Score.Horizontal.TProgressbar")
            pct = ttk.Label(self.scores, width=6, anchor="e")
            name.grid(row=i, column=0, sticky="w", padx=(0, 12))
            bar.grid(row=i, column=1, sticky="ew", pady=2)
            pct.grid(row=i, column=2, sticky="e", padx=(8, 0))
            self.rows.append((name, bar, pct))
        self.status = ttk.Label(frame, foreground=GREY)
        self.status.grid(row=5, column=0, sticky="w", pady=(12, 0))
        root.bind("<Control-q>", lambda _event: self.close())
        root.protocol("WM_DELETE_WINDOW", self.close)

    def _show_message(self, headline: str, detail: str, colour: str, event: str) -> None:
        self.intent.configure(text=headline, foreground=colour)
        self.detail.configure(text=detail)
        self.scores.grid_remove()
        self._emit(event, detail=detail)

    def _show_prediction(self, text: str, prediction: Prediction, ms: float) -> None:
        assert self.classifier is not None
        best, score = prediction.top_k[0]
        if prediction.rejected and self.classifier.oos is not None:  # the bundle's out-of-scope rule said so
            rule = self.classifier.oos
            detail = f"Out of scope: the best guess was {best} at {score:.1%}; {rule.method} score"
            detail += f" {prediction.oos_score:.4g} is {rule.direction} the bundle's threshold ({rule.threshold:.4g})"
        elif prediction.label == self.classifier.oos_label:  # the model itself says out-of-scope
            detail = f"Out of scope: not one of the intents this bundle knows (confidence {score:.1%})"
        else:
            detail = f"confidence {score:.1%}"
        in_scope = prediction.label != self.classifier.oos_label
        self.intent.configure(text=prediction.label, foreground=GREEN if in_scope else AMBER)
        self.detail.configure(text=detail)
        for i, (name, bar, pct) in enumerate(self.rows):  # a bundle may have fewer than TOP_K labels
            label, p = prediction.top_k[i] if i < len(prediction.top_k) else ("", 0.0)
            name.configure(text=label)
            bar.configure(value=100 * p)
            pct.configure(text=f"{p:.1%}" if label else "")
        self.scores.grid()
        self.status.configure(text=f"{ms:.1f} ms  ·  {self._about()}")
        self._emit(
            "result",
            text=text,
            score=prediction.score,
            rejected=prediction.rejected,
            top_k=prediction.top_k,
            latency_ms=round(ms, 3),
        )

    def _about(self) -> str:
        clf = self.classifier
        assert clf is not None
        threads = f"{clf.threads} thread" + ("" if clf.threads == 1 else "s")
        return f"bundle {clf.name}  ·  {len(clf.labels)} labels  ·  {threads}"

    def _emit(self, event: str, **fields: Any) -> None:
        """--trace: one JSON line per change of what the window shows; `label` is the widget's own text."""
        if self.trace:
            print(json.dumps({"event": event, "label": self.intent.cget("text"), **fields}), flush=True)

    # -- events (Tk thread) -----------------------------------------------------------------------------

    def _on_edit(self, *_: object) -> None:
        self.seq += 1
        if self.debounce is not None:
            self.root.after_cancel(self.debounce)
        self.debounce = self.root.after(DEBOUNCE_MS, self._predict)

    def _predict(self) -> None:
        self.debounce = None
        if self.classifier is None:
            return  # still loading (it predicts the current text when ready) or failed
        text = self.text.get()
        if not text.strip():
            self._show_message("", "Type a request above; the intent shows as you type.", GREY, "empty")
            return
        self._run("predict", self.seq, timed_predict, self.classifier, text)

    def _run(self, kind: str, seq: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        future = self.worker.submit(fn, *args, **kwargs)
        # The callback runs on the worker thread, so it only hands the future to the Tk thread.
        future.add_done_callback(lambda done: self.inbox.put((kind, seq, done)))

    def _poll(self) -> None:
        while True:
            try:
                kind, seq, future = self.inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "load":
                self._loaded(future)
            elif seq == self.seq:  # otherwise the text changed since: drop the stale result
                self._predicted(future)
        self.root.after(POLL_MS, self._poll)

    def _loaded(self, future: Future[Classifier]) -> None:
        try:
            self.classifier = future.result()
        except BundleError as err:  # missing, incomplete, modified or unreadable: the message names the file
            self._fail("Cannot use this bundle", f"{err}\n\n{REBUILD_HINT}")
            return
        except Exception as err:  # anything else (bad --threads, ...): say so, do not hang on Loading…
            self._fail("Cannot load the bundle", f"{type(err).__name__}: {err}")
            return
        self.status.configure(text=self._about())
        self._predict()  # whatever was typed while loading, or the hint for an empty box
        self._emit("ready", bundle=self.classifier.name)

    def _fail(self, headline: str, detail: str) -> None:
        self._show_message(headline, detail, RED, "error")
        self.entry.state(["disabled"])

    def _predicted(self, future: Future[tuple[Prediction, float]]) -> None:
        try:
            prediction, ms = future.result()
        except Exception as err:  # the runtime answers odd text, but an app should not die on a surprise
            self._show_message("Prediction failed", f"{type(err).__name__}: {err}", RED, "error")
            return
        self._show_prediction(self.text.get(), prediction, ms)

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.root.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description="Classify what you type with an edgepack bundle.")
    parser.add_argument("bundle", nargs="?", type=Path, default=DEFAULT_BUNDLE, help="bundle folder")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="ONNX Runtime intra-op threads")
    parser.add_argument("--trace", action="store_true", help="print a JSON line each time the result changes")
    args = parser.parse_args()
    root = tk.Tk()
    App(root, args.bundle, args.threads, args.trace)
    root.mainloop()


if __name__ == "__main__":
    main()
