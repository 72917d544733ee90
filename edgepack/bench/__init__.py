"""`edgepack bench`: bundles, their teacher and a peer runtime measured side by side. Measuring, not building:
nothing in the build imports this package, and what only it needs is the `bench` extra
(`pip install 'edgepack[bench]'`: Optimum's ONNX Runtime support for the peer and Optimum's INT8 teacher,
matplotlib for the plot).

  contenders  what is measured: bundles through edgepack_runtime, the teacher in PyTorch, Optimum's INT8
              model of the teacher, the Optimum peer
  measure     how: interleaved batch-1 latency, throughput, accuracy, and the JSON report (its keys documented)
  floor       each bundle's physical floor: its graph's multiply-accumulates over this CPU's GEMM rates
  report      the terminal tables and the plot, drawn from the JSON report alone
  command     the `edgepack bench` command behind its click options: reads the data, picks the teacher, runs
              the above and writes the report (edgepack.cli imports it inside the command, after this check)

Importing this package checks that the extra is installed (as model2vec's `distill` package checks its own)
and raises MissingExtra, an ImportError naming the extra, when it is not.
"""

from __future__ import annotations

from importlib.util import find_spec

EXTRA = "bench"
# module -> the requirement of the extra that provides it
REQUIRED = {"optimum.onnxruntime": "optimum-onnx[onnxruntime]", "matplotlib": "matplotlib"}


class MissingExtra(ImportError):
    """A package of the `bench` extra is not installed; the message says what to install."""


def _installed(module: str) -> bool:
    # find_spec, not import: importing optimum.onnxruntime pulls in transformers and torch, which only the
    # contenders that use it should pay for.
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module set to None in sys.modules
        return False


def missing() -> list[str]:
    """The requirements of the `bench` extra whose modules cannot be found."""
    return [requirement for module, requirement in REQUIRED.items() if not _installed(module)]


if _absent := missing():
    raise MissingExtra(
        f"edgepack bench needs {' and '.join(_absent)}, which building a bundle does not: "
        f"pip install 'edgepack[{EXTRA}]'"
    )
