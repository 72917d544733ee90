"""Out-of-scope stage: a score computed inside model.onnx, and a threshold chosen on validation only.

The exported graph has a second output, `features` (the last layer mean-pooled over the attention mask, the
pooling all-MiniLM-L6-v2 was trained with). This stage reads logits and features of the quantized graph (run as
the runtime runs it: one text at a time), fits what the feature methods need on the training split (in-scope
classes only), scores every method on validation, picks one, and rewrites the graph: the chosen score becomes
the output `oos_score` (float nodes appended after quantization, so INT8 does not touch them) and `features`
is removed. Every runtime then applies one threshold to one number.

Methods (score; which side is out of scope):
  max_probability  top softmax probability                                  below the threshold
  max_logit        top logit                                                below
  energy           logsumexp of the logits (Liu et al., 2020)               below
  mahalanobis      smallest Mahalanobis distance of the feature to a class mean, one shared covariance
                   (Podolskiy et al., 2021)                                 above
  centroid_cosine  largest cosine similarity of the feature to a class mean below

Rules for the threshold (`[evaluate] oos_threshold`):
  "reject:Q"  the threshold that rejects a share Q of the in-scope validation texts: needs no out-of-scope
              examples and does not depend on how many the validation split has
  "auto"      maximise the mean of in-scope accuracy and out-of-scope recall on validation (balanced)
  "accuracy"  maximise validation accuracy (the rule of bundles before this stage existed)
  a number    that threshold, on the chosen method's score
`[evaluate] oos_method = "auto"` picks the method whose threshold (by the rule) gives the best balanced
validation score; every method's validation figures go into the manifest.

Data without an out-of-scope class (no `[data] oos_label`, or one the data lacks) is answered by argmax,
unless `[evaluate] rejection_label` names the answer to rejected texts: labels.json then gains that label last,
the graph's logits gain a column far below every other (the model never predicts it; its probability is 0),
and the threshold ("reject:Q" or a number: there are no out-of-scope texts to tune on) is set on the in-scope
validation texts as above.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from edgepack_runtime.data import DataError
from edgepack_runtime.manifest import rejects

from edgepack import metrics
from edgepack.data import LabelledSplits
from edgepack.graphs import graph_outputs
from edgepack.recipe import OOS_METHODS, reject_share

log = logging.getLogger(__name__)

FEATURES = "features"  # the exported graph's pooled-feature output (removed before packaging)
SCORE = "oos_score"  # the packaged graph's score output
METHODS = OOS_METHODS
ABOVE = {"mahalanobis"}  # methods whose high scores mean out of scope
SHRINKAGE = 1e-3  # ridge added to the shared covariance (relative to its mean variance), for a stable inverse
CLASS_LOGITS = "oos/class_logits"  # the model's logits, when a rejection label's column is appended to them
REJECTION_MARGIN = 1e4  # the appended logit is this far below the smallest: exp(-1e4) is 0 in float32


@dataclass
class ClassStats:
    """What the feature methods need, fitted on the training split's in-scope texts."""

    means: np.ndarray  # [classes, hidden] float64
    cholesky: np.ndarray  # [hidden, hidden]: precision = L @ L.T, so distance = |x L - mean L|^2

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> ClassStats:
        x = features.astype(np.float64)
        classes = np.unique(labels)
        means = np.stack([x[labels == c].mean(axis=0) for c in classes])
        centred = x - means[np.searchsorted(classes, labels)]
        covariance = centred.T @ centred / len(x)
        covariance += SHRINKAGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
        return cls(means, np.linalg.cholesky(np.linalg.inv(covariance)))


def method_scores(method: str, logits: np.ndarray, features: np.ndarray, stats: ClassStats) -> np.ndarray:
    """The score of `method` per row, in float32 as the graph computes it (see _score_tensor)."""
    logits = logits.astype(np.float32)
    if method == "max_probability":
        return metrics.softmax(logits).max(axis=1)
    if method == "max_logit":
        return logits.max(axis=1)
    if method == "energy":
        top = logits.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
    x = features.astype(np.float32)
    if method == "mahalanobis":
        cholesky, cross, mean_norms = _mahalanobis_tensors(stats)
        z = x @ cholesky
        return ((z @ cross + (z * z).sum(axis=1, keepdims=True)) + mean_norms).min(axis=1)
    if method == "centroid_cosine":
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        return (unit @ _unit_means(stats).T).max(axis=1)
    raise ValueError(f"unknown out-of-scope method {method!r}; expected one of {METHODS}")


def _float16(value: np.ndarray) -> np.ndarray | None:
    """`value` in float16, None when an entry is beyond its range (65,504)."""
    return value.astype(np.float16) if np.abs(value).max() <= np.finfo(np.float16).max else None


def _stored(value: np.ndarray) -> np.ndarray:
    """`value` rounded to float16 when it is within its range, as the graph then stores it (_Nodes.matrix):
    this module's scores, the threshold chosen on them and the graph's use the same numbers."""
    half = _float16(value)
    return (value if half is None else half).astype(np.float32)


def _mahalanobis_tensors(stats: ClassStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L, -2 (mean L)^T and |mean L|^2, so that |x L - mean L|^2 = |x L|^2 + (x L)(-2 (mean L)^T) + |mean L|^2:
    two matrix products and no [texts, classes, hidden] intermediate (a broadcast difference cost 8% of the
    bundle's latency, these products about 1%). |mean L|^2 is summed from the stored mean L, so each distance
    stays |x L - mean L|^2 of the stored matrices."""
    cholesky = _stored(stats.cholesky)
    projected = _stored(stats.means @ cholesky)
    return (
        cholesky,
        -2.0 * projected.T,  # exact in float16 too: a power of two
        (projected.astype(np.float64) ** 2).sum(axis=1)[None, :].astype(np.float32),
    )


def _unit_means(stats: ClassStats) -> np.ndarray:
    return _stored(stats.means / np.linalg.norm(stats.means, axis=1, keepdims=True))


# ---------------------------------------------------------------- rules


def direction(method: str) -> str:
    """Which side of the threshold `method`'s out-of-scope texts lie on (the manifest's oos.direction)."""
    return "above" if method in ABOVE else "below"


def rejected(scores: np.ndarray, threshold: float, method: str) -> np.ndarray:
    return rejects(scores, threshold, direction(method))


def answers(
    pred: np.ndarray, scores: np.ndarray, threshold: float | None, method: str, oos_id: int
) -> np.ndarray:
    """Argmax ids with the rejected rows set to the out-of-scope id."""
    if threshold is None:
        return pred
    return np.where(rejected(scores, threshold, method), oos_id, pred)


def _candidates(scores: np.ndarray) -> np.ndarray:
    """Midpoints between neighbouring distinct scores, plus one beyond each end (reject none / all)."""
    unique = np.unique(scores.astype(np.float64))
    spread = max(1e-6, float(unique[-1] - unique[0]) * 1e-6)
    return np.concatenate([[unique[0] - spread], (unique[:-1] + unique[1:]) / 2, [unique[-1] + spread]])


def _accuracy(answered: np.ndarray, ids: np.ndarray) -> float:
    return float((answered == ids).mean())


def _balanced(answered: np.ndarray, ids: np.ndarray) -> float:
    """Mean of in-scope accuracy and out-of-scope recall (ids: gold with out-of-scope as -1)."""
    in_scope = ids != -1
    return float(((answered[in_scope] == ids[in_scope]).mean() + (answered[~in_scope] == -1).mean()) / 2)


# "auto" is the balanced rule (it does not depend on the validation split's out-of-scope share).
OBJECTIVES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"auto": _balanced, "accuracy": _accuracy}


def _best_threshold(rule: str, scores: np.ndarray, method: str, pred: np.ndarray, ids: np.ndarray) -> float:
    """The threshold maximising the rule's objective; ties go to the one rejecting fewest rows. Candidates
    are midpoints between at most 2,000 score quantiles (validation splits can be large)."""
    grid = np.quantile(scores.astype(np.float64), np.linspace(0, 1, min(len(scores), 2000)))
    candidates = _candidates(grid)
    order = candidates[::-1] if method in ABOVE else candidates  # from rejecting none to rejecting all
    values = [OBJECTIVES[rule](answers(pred, scores, float(t), method, -1), ids) for t in order]
    return float(order[int(np.argmax(values))])


def choose_threshold(
    rule: str | float, scores: np.ndarray, pred: np.ndarray, gold: np.ndarray, oos_id: int, method: str
) -> float:
    """The threshold on `scores` that `rule` picks on these (validation) rows."""
    if isinstance(rule, int | float):
        return float(rule)
    in_scope = gold != oos_id
    if rule.startswith("reject:"):
        share = reject_share(rule)
        assert share is not None, f"{rule!r} is checked by EvaluateConfig"
        inside = scores[in_scope].astype(np.float64)
        # Reject `share` of the in-scope rows: the score at that quantile, from the out-of-scope side.
        return float(np.quantile(inside, 1 - share if method in ABOVE else share))
    if not (~in_scope).any():
        raise ValueError(
            f"[evaluate] oos_threshold = {rule!r} needs out-of-scope texts in the validation split, which has "
            "none; use a reject rule such as 'reject:0.02' (it needs none)."
        )
    return _best_threshold(rule, scores, method, pred, np.where(gold == oos_id, -1, gold))


def figures(pred: np.ndarray, gold: np.ndarray, oos_id: int) -> dict[str, float | None]:
    """accuracy, in-scope accuracy, oos recall, and their balanced mean (with no out-of-scope texts: no
    recall, and the in-scope accuracy)."""
    out: dict[str, float | None] = dict(metrics.scores(pred, gold, oos_id))
    if not (np.asarray(gold) == oos_id).any():
        return out | {"oos_recall": None, "balanced": out["in_scope_accuracy"]}
    return out | {"balanced": (out["in_scope_accuracy"] + out["oos_recall"]) / 2}  # type: ignore[operator]


_OOS_LIKE = ("oos", "out_of_scope", "out-of-scope", "outofscope", "none", "other", "unknown")


def _oos_hint(labels: list[str]) -> str:
    """A pointer to --oos-label when one of the data's classes looks like an out-of-scope class."""
    named = [label for label in labels if label.lower() in _OOS_LIKE]
    if not named:
        return ""
    return f" (its class {named[0]!r} is learnt as an ordinary class; if it means out of scope: --oos-label {named[0]})"


def plan(splits: LabelledSplits, rule: str | float | None, rejection_label: str | None) -> dict[str, Any]:
    """What the oos stage will do with these splits: the label rejected texts get, whether it is added to
    the data's labels, and why. Raises DataError, before any training, for a plan that cannot work."""
    if splits.oos_label is not None:
        if rejection_label not in (None, splits.oos_label):
            raise DataError(
                f"[evaluate] rejection_label = {rejection_label!r}, but the data has an out-of-scope class "
                f"{splits.oos_label!r} ([data] oos_label), which rejected texts are answered with: unset "
                "rejection_label."
            )
        in_validation = bool((splits.label_ids["validation"] == splits.oos_id()).any())
        if rule in ("auto", "accuracy") and not in_validation:
            raise DataError(
                f"[evaluate] oos_threshold = {rule!r} is chosen on out-of-scope validation texts, and the "
                f"validation split has none labelled {splits.oos_label!r}: use a reject rule such as "
                "'reject:0.02' (it needs none)."
            )
        why = "the data's out-of-scope class" if rule is not None else "no oos_threshold: argmax answers"
        return {"label": splits.oos_label if rule is not None else None, "added": False, "why": why}
    if rejection_label is None or rule is None:
        why = (
            "the data has no out-of-scope class ([data] oos_label is unset) and [evaluate] rejection_label is "
            "unset: the bundle answers by argmax" + _oos_hint(splits.labels)
            if rejection_label is None
            else "[evaluate] oos_threshold is none: the bundle answers by argmax"
        )
        return {"label": None, "added": False, "why": why}
    if rejection_label in splits.labels:
        raise DataError(
            f"[evaluate] rejection_label = {rejection_label!r} is a class of the data; if it is the data's "
            "out-of-scope class, set [data] oos_label (--oos-label) to it and unset rejection_label, else "
            "choose another name."
        )
    why = f"[evaluate] rejection_label: added to the data's labels, answered when {rule!r} rejects a text"
    return {"label": rejection_label, "added": True, "why": why}


# ---------------------------------------------------------------- the score inside the graph


def _opset(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


class _Nodes:
    """Appends nodes and constants named `oos/...` to a graph, in the form its opset wants."""

    def __init__(self, model: Any) -> None:
        self.graph, self.opset = model.graph, _opset(model)

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(value, f"oos/{name}"))
        return f"oos/{name}"

    def matrix(self, name: str, value: np.ndarray) -> str:
        """A large float32 constant stored in float16 when that loses nothing (values from _stored), for half
        the bytes, and cast back: ONNX Runtime folds the Cast when it loads the graph, so the products run in
        float32 as before."""
        from onnx import TensorProto

        half = _float16(value)
        if half is None or not np.array_equal(half.astype(np.float32), value):
            return self.const(name, value)
        return self.op("Cast", [self.const(f"{name}_fp16", half)], name, to=TensorProto.FLOAT)

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        from onnx import helper

        self.graph.node.append(
            helper.make_node(op_type, inputs, [f"oos/{name}"], name=f"oos/{name}", **attrs)
        )
        return f"oos/{name}"

    def reduce(self, op_type: str, x: str, axis: int, name: str, keepdims: int = 0) -> str:
        # ReduceSum takes its axes as an input from opset 13, the other reductions from opset 18.
        if op_type == "ReduceSum" or self.opset >= 18:
            axes = self.const(f"{name}_axes", np.array([axis], dtype=np.int64))
            return self.op(op_type, [x, axes], name, keepdims=keepdims)
        return self.op(op_type, [x], name, axes=[axis], keepdims=keepdims)


def _score_tensor(nodes: _Nodes, method: str, stats: ClassStats) -> str:
    """Nodes computing `method` from the graph's `logits` and `features`; returns the [batch] score tensor."""
    if method == "max_probability":
        return nodes.reduce("ReduceMax", nodes.op("Softmax", ["logits"], "softmax", axis=-1), 1, "score")
    if method == "max_logit":
        return nodes.reduce("ReduceMax", "logits", 1, "score")
    if method == "energy":
        return nodes.reduce("ReduceLogSumExp", "logits", 1, "score")
    if method == "mahalanobis":
        cholesky, cross, mean_norms = _mahalanobis_tensors(stats)
        z = nodes.op("MatMul", [FEATURES, nodes.matrix("cholesky", cholesky)], "projected")
        products = nodes.op("MatMul", [z, nodes.matrix("cross", cross)], "cross_terms")
        norms = nodes.reduce("ReduceSumSquare", z, 1, "projected_norm", keepdims=1)
        partial = nodes.op("Add", [products, norms], "partial")
        distances = nodes.op("Add", [partial, nodes.const("mean_norms", mean_norms)], "distances")
        return nodes.reduce("ReduceMin", distances, 1, "score")
    if method == "centroid_cosine":
        norm = nodes.reduce("ReduceL2", FEATURES, 1, "norm", keepdims=1)
        unit = nodes.op("Div", [FEATURES, norm], "unit")
        cosines = nodes.op(
            "MatMul", [unit, nodes.matrix("unit_means_t", _unit_means(stats).T.copy())], "cosines"
        )
        return nodes.reduce("ReduceMax", cosines, 1, "score")
    raise ValueError(f"unknown out-of-scope method {method!r}; expected one of {METHODS}")


def _drop_dead_nodes(graph: Any) -> None:
    """Remove nodes (and initializers) that no graph output depends on."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed |= set(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    live = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(live)


def _append_rejection_logit(nodes: _Nodes) -> None:
    """`logits` gains a last column REJECTION_MARGIN below the row's smallest logit: the rejection label's,
    never the argmax, probability 0, and no change to any score computed from the logits."""
    graph = nodes.graph
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == "logits":
                node.input[i] = CLASS_LOGITS
        for i, name in enumerate(node.output):
            if name == "logits":
                node.output[i] = CLASS_LOGITS
    lowest = nodes.reduce("ReduceMin", CLASS_LOGITS, 1, "lowest_logit", keepdims=1)
    margin = nodes.const("rejection_margin", np.array(REJECTION_MARGIN, dtype=np.float32))
    floor = nodes.op("Sub", [lowest, margin], "rejection_logit")
    nodes.op("Concat", [CLASS_LOGITS, floor], "logits_with_rejection", axis=1)
    graph.node[-1].output[0] = "logits"
    dims = next(o for o in graph.output if o.name == "logits").type.tensor_type.shape.dim
    if dims and dims[-1].dim_value:
        dims[-1].dim_value += 1


def rewrite_graph(
    onnx_path: Path, method: str | None, stats: ClassStats | None, out: Path, add_rejection: bool = False
) -> None:
    """The graph at `onnx_path` with `features` replaced by `oos_score` computed by `method` (None: only
    `features` removed), and with `add_rejection` a last logit for a rejection label, written to `out`."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    batch = graph.output[0].type.tensor_type.shape.dim[0]
    kept_outputs = [o for o in graph.output if o.name != FEATURES]
    nodes = _Nodes(model)
    if add_rejection:
        _append_rejection_logit(nodes)
    if method is not None:
        assert stats is not None or method not in ("mahalanobis", "centroid_cosine")
        _score_tensor(nodes, method, stats)  # type: ignore[arg-type]
        graph.node[-1].output[0] = SCORE  # the last node appended computes the score
        shape = [batch.dim_param or batch.dim_value]
        kept_outputs.append(helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, shape))
    del graph.output[:]
    graph.output.extend(kept_outputs)
    _drop_dead_nodes(graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


# ---------------------------------------------------------------- the stage


@dataclass
class OosResult:
    onnx_path: Path  # the graph to package: logits (+ oos_score when rejection is on)
    oos: dict[str, Any] | None  # the manifest's "oos": label, method, output, direction, threshold, rule
    record: dict[str, Any]  # every method's validation figures, fidelity of the INT8 score, bytes added
    labels: list[str]  # the bundle's labels.json: the data's, plus an added rejection label


def _outputs(onnx_path: Path, tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    # One text per run: dynamic INT8 scales activations per batch, and the runtime runs one text at a time.
    return graph_outputs(onnx_path, tokenizer, texts, max_length, ("logits", FEATURES), batch_size=1)


def _evaluate_methods(
    methods: tuple[str, ...],
    rule: str | float,
    val: dict[str, np.ndarray],
    gold: np.ndarray,
    oos_id: int,
    stats: ClassStats,
) -> dict[str, dict[str, Any]]:
    pred = val["logits"].argmax(axis=1)
    out = {}
    for method in methods:
        scores = method_scores(method, val["logits"], val[FEATURES], stats)
        threshold = choose_threshold(rule, scores, pred, gold, oos_id, method)
        out[method] = {
            "threshold": threshold,
            **figures(answers(pred, scores, threshold, method, oos_id), gold, oos_id),
        }
    return out


def run(
    int8: Path,
    fp32: Path,
    method: str,
    rule: str | float | None,
    tokenizer: Any,
    splits: LabelledSplits,
    max_length: int,
    out: Path,
    rejection_label: str | None = None,
) -> OosResult:
    """Choose the out-of-scope method and threshold on validation and build them into the graph at `out`
    (see the module docstring for data without an out-of-scope class and `rejection_label`)."""
    planned = plan(splits, rule, rejection_label)
    labels = [*splits.labels, planned["label"]] if planned["added"] else list(splits.labels)
    oos_id = labels.index(planned["label"]) if planned["label"] is not None else None
    if oos_id is None or rule is None:
        log.info("oos: %s", planned["why"])
        rewrite_graph(int8, None, None, out)
        return OosResult(out, None, {"method": None, "why": planned["why"]}, labels)
    train = _outputs(int8, tokenizer, splits.texts["train"], max_length)
    val = _outputs(int8, tokenizer, splits.texts["validation"], max_length)
    train_ids = splits.label_ids["train"]
    stats = ClassStats.fit(train[FEATURES][train_ids != oos_id], train_ids[train_ids != oos_id])
    gold = splits.label_ids["validation"]
    candidates = _evaluate_methods(METHODS if method == "auto" else (method,), rule, val, gold, oos_id, stats)
    chosen = max(candidates, key=lambda m: candidates[m]["balanced"]) if method == "auto" else method
    threshold = candidates[chosen]["threshold"]
    rewrite_graph(int8, chosen, stats, out, add_rejection=planned["added"])
    oos = {
        "label": planned["label"],
        "method": chosen,
        "output": SCORE,
        "direction": direction(chosen),
        "threshold": threshold,
        "rule": rule,
    }
    record = {
        "method": chosen,
        "chosen_by": "best balanced validation score" if method == "auto" else "recipe",
        "rule": rule,
        "label": planned["label"],
        "why": planned["why"],
        "feature": "last layer mean-pooled over the attention mask",
        "validation": candidates,
        "bytes_added": out.stat().st_size - int8.stat().st_size,
        "graph_vs_numpy_max_rel_diff": _graph_agreement(
            out, chosen, val, stats, tokenizer, splits, max_length
        ),
        "fp32_vs_int8_validation": _fp32_agreement(
            fp32, chosen, threshold, val, stats, tokenizer, splits, max_length
        ),
    }
    log.info("oos: %s, threshold %.4g (%s); validation %s", chosen, threshold, rule, candidates[chosen])
    return OosResult(out, oos, record, labels)


def _graph_agreement(
    graph: Path,
    method: str,
    val: dict[str, np.ndarray],
    stats: ClassStats,
    tokenizer: Any,
    splits: LabelledSplits,
    max_length: int,
) -> float:
    """Largest difference between the packaged graph's oos_score and this module's score on 200 validation
    texts, relative to the scores' scale (float32 sums in another order differ in the last bits)."""
    texts = splits.texts["validation"][:200]
    got = graph_outputs(graph, tokenizer, texts, max_length, (SCORE,), batch_size=1)[SCORE]
    expected = method_scores(method, val["logits"][:200], val[FEATURES][:200], stats)
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))


def _fp32_agreement(
    fp32: Path,
    method: str,
    threshold: float,
    val: dict[str, np.ndarray],
    stats: ClassStats,
    tokenizer: Any,
    splits: LabelledSplits,
    max_length: int,
) -> dict[str, float]:
    """How the score of the fp32 graph compares with the INT8 one's on validation."""
    ref = graph_outputs(fp32, tokenizer, splits.texts["validation"], max_length, ("logits", FEATURES))
    a = method_scores(method, ref["logits"], ref[FEATURES], stats)
    b = method_scores(method, val["logits"], val[FEATURES], stats)
    return {
        "decision_agreement": float(
            (rejected(a, threshold, method) == rejected(b, threshold, method)).mean()
        ),
        "score_correlation": float(np.corrcoef(a, b)[0, 1]),
        "max_abs_score_diff": float(np.abs(a - b).max()),
    }
