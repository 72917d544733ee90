"""`Classifier`: a verified bundle behind an ONNX Runtime session, answering text queries.

A Classifier is complete when `load` returns (nothing is created lazily) and never changes afterwards:
the tokenizer is configured by the bundle and only read, padding is done here with numpy, and ONNX Runtime
sessions may be run from many threads at once. So one instance can be shared by any number of threads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import DTypeLike

from edgepack_runtime import cpu
from edgepack_runtime.bundle import VerifiedBundle, read_bundle
from edgepack_runtime.errors import BundleError, TargetMismatchError
from edgepack_runtime.manifest import MANIFEST, OosRule, Spec
from edgepack_runtime.signing import PublicKeySource, Signature
from edgepack_runtime.textguard import CHARS_PER_TOKEN, clean_text, clean_texts

_NUMPY_TYPES = {"int64": np.int64, "int32": np.int32}
# Operators that quantize activations with a scale computed over the whole input tensor: with them, a row's
# result depends on the other rows (and the padding) of its batch.
DYNAMIC_QUANT_OPS = frozenset(
    {"DynamicQuantizeLinear", "com.microsoft:DynamicQuantizeMatMul", "com.microsoft:DynamicQuantizeLSTM"}
)
_PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>")
# ONNX Runtime graph fusions left off when a session starts. SkipLayerNormFusion would turn a residual Add and
# LayerNormalization back into SkipLayerNormalization, whose CPU kernel (ORT 1.32) is 3-7x slower than the
# two (benchmarks/layernorm_kernels.py): edgepack builds graphs without it and keeps them that way.
DISABLED_FUSIONS = ("SkipLayerNormFusion",)


@dataclass(frozen=True)
class Prediction:
    """label and score of the answer; top_k the best classes by probability, best first.

    When the bundle has an out-of-scope rule, `oos_score` is the score it applies to (the graph's `oos_score`
    output, or the top probability for bundles without one); when the score is on the out-of-scope side of
    the threshold, `label` is the out-of-scope label and `rejected` is True, while `score` is still the top
    probability and `top_k` the model's own ranking.
    """

    label: str
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    rejected: bool = False
    oos_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": label, "score": score} for label, score in self.top_k],
            "rejected": self.rejected,
            "oos_score": self.oos_score,
        }


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def session_options(threads: int) -> ort.SessionOptions:
    """How every edgepack session runs (the runtime's, and the build side's measurements alike): `threads`
    intra-op threads (0: ONNX Runtime decides), one inter-op thread, operators run in sequence, the fusions in
    DISABLED_FUSIONS off."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("optimization.disable_specified_optimizers", ",".join(DISABLED_FUSIONS))
    return options


def limit_tokenizer_threads(threads: int) -> None:
    """At `threads` = 1, one thread means one core: tokenize batches on the calling thread too. The tokenizers
    library otherwise spreads each batch over its own pool of one thread per core (TOKENIZERS_PARALLELISM; a
    value the user set wins). Process-wide, so for programs' entry points: `edgepack-run` and its server, the
    frozen executable, one-thread benchmarks."""
    if threads == 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def feeds(
    rows: Sequence[Sequence[int]], types: Mapping[str, DTypeLike], pad_id: int = 0
) -> dict[str, np.ndarray]:
    """The graph's inputs for token-id rows, padded with `pad_id` to the longest row: input_ids,
    attention_mask and, when `types` names it, token_type_ids (zeros), each of its type in `types`
    (input name -> numpy type or its name, e.g. "int64", as manifest.json's model.inputs give them)."""
    if len(rows) == 1:  # a single query: nothing to pad
        ids = np.array(rows, dtype=np.int64)
        mask = np.ones_like(ids)
    else:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in types:
        out["token_type_ids"] = np.zeros_like(ids)
    return {name: array.astype(types[name], copy=False) for name, array in out.items()}


def _session(model: bytes, threads: int) -> ort.InferenceSession:
    options = session_options(threads)
    options.log_severity_level = 4  # errors reach the caller as BundleError, not as log lines on stderr
    options.add_session_config_entry("session.load_model_format", "ONNX")  # never the ORT flatbuffer format
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types
        raise BundleError("model.onnx", f"ONNX Runtime cannot load it: {str(err)[:300]}") from None


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # float32 logits (checked at load); a new array
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class Classifier:
    """Use `Classifier.load(path)`; the constructor is internal."""

    def __init__(self, bundle: VerifiedBundle, session: ort.InferenceSession, threads: int) -> None:
        spec = bundle.spec
        self._bundle = bundle
        self._session = session
        self._threads = threads
        self._tokenizer = bundle.tokenizer
        self._labels = list(bundle.labels)
        self._max_length = spec.max_length
        self._max_chars = CHARS_PER_TOKEN * spec.max_length
        self._types = {t.name: _NUMPY_TYPES[t.type] for t in spec.inputs}
        self._oos = spec.oos  # the out-of-scope rule, None: answers are the argmax
        self._outputs = [spec.output.name] + ([spec.oos.output] if spec.oos and spec.oos.output else [])
        self._batch_invariant = not DYNAMIC_QUANT_OPS & set(bundle.scan.op_types)
        pad_ids = (self._tokenizer.token_to_id(t) for t in _PAD_TOKENS)
        self._pad_id = next((i for i in pad_ids if i is not None), 0)  # masked out, so any valid id works

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        threads: int = 1,
        strict: bool = False,
        public_key: PublicKeySource | None = None,
    ) -> Classifier:
        """Verify the bundle at `path` and prepare it to run on `threads` intra-op threads (0: ORT decides).

        Raises BundleError naming the file and the problem. When the CPU lacks a feature the bundle's target
        relies on, warns once (cpu.TargetWarning) or, with strict=True, raises TargetMismatchError.

        public_key: a PEM file's path or PEM bytes of the Ed25519 key the bundle must be signed with
        (manifest.sig); refused with SignatureError (a BundleError) when the signature is missing,
        malformed, by another key or over another manifest. Needs the 'sign' extra (cryptography).
        """
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an integer >= 0 (0 lets ONNX Runtime decide), got {threads!r}")
        bundle = read_bundle(path, public_key)
        spec = bundle.spec
        message = cpu.check_target(spec.name, spec.target_name, spec.cpu_features, cpu.detect())
        if message and strict:
            raise TargetMismatchError(MANIFEST, f"{message} (refused because strict=True)")
        if message:
            cpu.warn_once(message)
        classifier = cls(bundle, _session(bundle.model_bytes, threads), threads)
        classifier._check_session()
        classifier._probe()
        return classifier

    # -- load-time checks -------------------------------------------------------------------------------

    def _check_session(self) -> None:
        spec = self._bundle.spec
        graph_inputs = {i.name: i.type for i in self._session.get_inputs()}
        if set(graph_inputs) != set(self._types):
            raise BundleError(
                "model.onnx",
                f"graph inputs {sorted(graph_inputs)} differ from model.inputs {sorted(self._types)}",
            )
        for item in spec.inputs:
            if graph_inputs[item.name] != f"tensor({item.type})":
                raise BundleError(
                    "model.onnx",
                    f"input '{item.name}' is {graph_inputs[item.name]}, manifest says {item.type}",
                )
        outputs = {o.name: o for o in self._session.get_outputs()}
        listed = {t["name"] for t in self._bundle.manifest["model"]["outputs"]}
        if set(outputs) != listed:
            raise BundleError(
                "model.onnx",
                f"graph outputs {sorted(outputs)} differ from manifest.json's model.outputs {sorted(listed)}",
            )
        if self._oos is not None and self._oos.output is not None:
            score = outputs[self._oos.output]
            if score.type != "tensor(float)" or len(score.shape) != 1:
                raise BundleError(
                    "model.onnx",
                    f"output '{score.name}' (manifest oos.output) must be float32 with one value per text, "
                    f"is {score.type} of shape {score.shape}",
                )
        logits = outputs.get(self._outputs[0])
        if logits is None or logits.type != "tensor(float)":
            found = {name: o.type for name, o in outputs.items()}
            raise BundleError("model.onnx", f"needs a float32 output '{self._outputs[0]}', found {found}")
        last = logits.shape[-1] if logits.shape else None
        if isinstance(last, int) and last != len(self._labels):
            raise BundleError(
                "model.onnx", f"outputs {last} classes but labels.json has {len(self._labels)} labels"
            )

    def _probe(self) -> None:
        """Run the largest token id the tokenizer can produce, max_length times: an embedding or position
        table smaller than the manifest claims fails here rather than on some user's long query."""
        top_id = self._tokenizer.get_vocab_size(with_added_tokens=True) - 1
        try:
            logits, scores = self._run([[top_id] * self._max_length])
        except Exception as err:  # ORT raises its own exception types
            raise BundleError(
                "model.onnx",
                f"failed a test run with token id {top_id} repeated max_length={self._max_length} times "
                f"(is the embedding or position table smaller than the manifest says?): {str(err)[:300]}",
            ) from None
        if logits.shape != (1, len(self._labels)):
            raise BundleError(
                "model.onnx",
                f"returned logits of shape {logits.shape} for one text; expected (1, {len(self._labels)})",
            )
        if not np.isfinite(logits).all():
            raise BundleError("model.onnx", "returned non-finite logits on a test run")
        if scores is not None and (scores.shape != (1,) or not np.isfinite(scores).all()):
            raise BundleError(
                "model.onnx",
                f"returned an out-of-scope score of shape {scores.shape} ({scores}) for one text",
            )

    # -- inference --------------------------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self._tokenize(texts)[0]

    def _tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token-id rows, and for each text whether it has nothing to classify (special tokens only)."""
        # One text: encode() keeps the GIL, which a server's event loop would otherwise take for milliseconds.
        # Many: encode_batch_fast skips the character offsets nothing here reads (18% faster, the same ids).
        tokenizer = self._tokenizer
        encodings = [tokenizer.encode(texts[0])] if len(texts) == 1 else tokenizer.encode_batch_fast(texts)
        blank = [0 not in e.special_tokens_mask for e in encodings]
        # A tokenizer without special tokens gives nothing for an empty text: feed one pad token instead.
        return [e.ids or [self._pad_id] for e in encodings], blank

    def _run(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits for token-id rows, padded with numpy to the longest row, and the graph's out-of-scope
        scores when it computes them."""
        values = self._session.run(self._outputs, feeds(rows, self._types, self._pad_id))
        return np.asarray(values[0]), np.asarray(values[1]) if len(values) > 1 else None

    def _probabilities(
        self, texts: list[str], batch_size: int
    ) -> tuple[np.ndarray, np.ndarray | None, list[bool]]:
        """Probabilities [texts, labels], the out-of-scope rule's scores [texts] (None without a rule), and
        which texts have nothing to classify."""
        rows, blank = self._tokenize(texts) if texts else ([], [])
        if not self._batch_invariant:
            batch_size = 1  # keep every answer equal to predict(text): see batch_invariant
        if len(rows) == 1:  # predict(): nothing to order or gather
            logits, graph_scores = self._run(rows)
            probs = _softmax(logits)
            scores = graph_scores if graph_scores is not None else np.empty(1, dtype=np.float32)
        else:
            probs = np.empty((len(rows), len(self._labels)), dtype=np.float32)
            scores = np.empty(len(rows), dtype=np.float32)
            order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths share a batch
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                logits, graph_scores = self._run([rows[i] for i in chunk])
                probs[chunk] = _softmax(logits)
                if graph_scores is not None:
                    scores[chunk] = graph_scores
        if self._oos is None:
            return probs, None, blank
        return probs, scores if self._oos.output is not None else probs.max(axis=1), blank

    def _predictions(
        self, probs: np.ndarray, scores: np.ndarray | None, top_k: int, blank: list[bool]
    ) -> list[Prediction]:
        """The answers for rows of probabilities and the out-of-scope rule's scores (None without a rule),
        ranked in one call for the whole batch. A text with nothing to classify (blank) is out of scope when
        the bundle has an out-of-scope label, whatever the model says about its special tokens alone."""
        best = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        top_scores = np.take_along_axis(probs, best, axis=1).tolist()
        oos_scores: list[float | None] = [None] * len(probs) if scores is None else scores.tolist()
        answers = []
        for ids, top, oos_score, empty in zip(best.tolist(), top_scores, oos_scores, blank, strict=True):
            ranked = [(self._labels[i], score) for i, score in zip(ids, top, strict=True)]
            label, score = ranked[0]
            if self._oos is not None and (empty or self._oos.rejects(oos_score)):
                answers.append(Prediction(self._oos.label, score, ranked, rejected=True, oos_score=oos_score))
            else:
                answers.append(Prediction(label, score, ranked, oos_score=oos_score))
        return answers

    def predict(self, text: str, top_k: int = 3) -> Prediction:
        """Classify one text (see textguard for what happens to empty, huge or odd texts)."""
        _positive_int(top_k, "top_k")
        probs, scores, blank = self._probabilities([clean_text(text, self._max_chars, "predict()")], 1)
        return self._predictions(probs, scores, top_k, blank)[0]

    def predict_batch(self, texts: Iterable[str], batch_size: int = 32, top_k: int = 3) -> list[Prediction]:
        """Classify many texts, `batch_size` at a time; same answers as `predict` one by one, in order."""
        _positive_int(top_k, "top_k")
        _positive_int(batch_size, "batch_size")
        cleaned = clean_texts(texts, self._max_chars, "predict_batch")
        probs, scores, blank = self._probabilities(cleaned, batch_size)
        return self._predictions(probs, scores, top_k, blank)

    def predict_proba(self, texts: Iterable[str], batch_size: int = 32) -> np.ndarray:
        """Softmax probabilities, float32 [len(texts), num_labels]; no out-of-scope threshold applied."""
        return self.predict_scores(texts, batch_size)[0]

    def predict_scores(
        self, texts: Iterable[str], batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Softmax probabilities [len(texts), num_labels] and the out-of-scope rule's scores [len(texts)]
        (None when the bundle has no rule), as predict_batch computes them; no threshold applied."""
        _positive_int(batch_size, "batch_size")
        return self._probabilities(clean_texts(texts, self._max_chars, "predict_scores"), batch_size)[:2]

    # -- read-only views --------------------------------------------------------------------------------

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    @property
    def manifest(self) -> dict[str, Any]:
        return self._bundle.manifest

    @property
    def spec(self) -> Spec:
        """The checked, typed view of the manifest."""
        return self._bundle.spec

    @property
    def name(self) -> str:
        return self._bundle.spec.name

    @property
    def path(self) -> Path:
        return self._bundle.path

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_chars(self) -> int:
        """Texts are cut to this many characters before tokenizing (CHARS_PER_TOKEN * max_length)."""
        return self._max_chars

    @property
    def batch_invariant(self) -> bool:
        """False for graphs with dynamic activation quantization (dynamic INT8): their per-tensor scale is
        computed over the whole batch, so batching would make a text's answer depend on its neighbours.
        predict_batch and predict_proba then run texts one at a time (batch_size is not used), keeping
        every answer equal to predict(text). Static INT8 (edgepack's static-integer mode too) and float graphs
        batch normally."""
        return self._batch_invariant

    @property
    def batch_mode(self) -> str:
        """How predict_batch runs a batch, in words (for summaries and the server's /manifest)."""
        if self._batch_invariant:
            return "padded batches of texts sorted by length"
        return "one text at a time (dynamic INT8: a batch would share one activation scale)"

    @property
    def oos(self) -> OosRule | None:
        """The out-of-scope rule the bundle ships: label, method, score output, direction, threshold."""
        return self._oos

    @property
    def oos_label(self) -> str | None:
        """The label of texts the out-of-scope rule rejects (None: no rejection)."""
        return self._bundle.spec.oos_label

    @property
    def oos_threshold(self) -> float | None:
        return self._bundle.spec.oos_threshold

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def signature(self) -> Signature | None:
        """The bundle's manifest.sig (well-formed), or None when it has none."""
        return self._bundle.signature

    @property
    def signed_by(self) -> str | None:
        """The id (sha256 of the raw public key) of the key whose signature load verified; None when no
        public key was given."""
        return self._bundle.signed_by

    @property
    def input_names(self) -> Sequence[str]:
        return tuple(self._types)

    @property
    def op_types(self) -> dict[str, int]:
        """How many nodes of each operator type the graph holds (as written in model.onnx)."""
        return dict(self._bundle.scan.op_types)

    def __repr__(self) -> str:
        return f"Classifier(name={self.name!r}, labels={len(self._labels)}, threads={self._threads})"
