"""The distillation search's Optuna study, alone in memory or shared by several workers through one database.

Optuna keeps a shared study: every worker sees the trials the others finished and samples beside them. What a
search spread over machines needs beyond that lives here:

- a heartbeat: a running trial whose worker stops beating (killed, machine lost) is marked FAIL by the other
  workers after `GRACE_BEATS` missed beats, so it is never the best and its place in the budget is taken again;
- a study-wide budget: `[search] trials` counts the study's trials, not one worker's; a worker starts a trial
  only while the finished and running ones are fewer, and a trial created past the budget (two workers racing
  for the last place) is failed before it trains;
- a common end: a worker leaves only when no trial runs anywhere, so every worker reads the same best trial;
- one set of inputs: the study remembers the data, teacher and search space it began with, and refuses a worker
  that brings others rather than mixing incomparable scores.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
from optuna.trial import TrialState

from edgepack.errors import RecipeError, StageError

log = logging.getLogger(__name__)

GRACE_BEATS = 3  # a running trial whose worker missed this many heartbeats is failed by the others
INPUTS_ATTR = "edgepack_inputs"  # the study's user attribute holding what its trials were trained from
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_COUNTED = (*_FINISHED, TrialState.RUNNING)  # what uses up the budget; a FAIL trial leaves its place free
_DRIVER_HINTS = {  # a missing DB-API module -> how to get it
    "psycopg": "pip install 'edgepack[search-db]'",
    "psycopg2": "pip install psycopg2-binary, or write the URL as postgresql+psycopg://... and "
    "pip install 'edgepack[search-db]'",
}


class BudgetSpent(Exception):
    """The trial was created after the study already had its total: it is failed before it trains."""


def redact_url(url: str | None) -> str | None:
    """The storage URL with its password replaced by ***, for logs and manifests."""
    if url is None:
        return None
    parts = urlsplit(url)
    if "@" not in parts.netloc or ":" not in parts.netloc.rsplit("@", 1)[0]:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


def check_storage_url(url: str) -> None:
    """Refuse a storage URL that SQLAlchemy cannot read, or whose database driver is not installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = redact_url(url)
    try:
        dialect = make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise RecipeError(
            f"[search] storage (--study-storage) = {shown!r} is not a database URL ({exc}): expected for "
            f"example sqlite:///study.db or postgresql://user@host:5432/database."
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = exc.name or dialect.driver
        fix = _DRIVER_HINTS.get(module, f"install the Python package that provides {module}")
        raise RecipeError(
            f"[search] storage (--study-storage) = {shown!r} needs the {dialect.name} driver {module!r}, which "
            f"is not installed: {fix}."
        ) from None


def open_storage(url: str, heartbeat_seconds: int, attempts: int = 3) -> optuna.storages.RDBStorage:
    """The study database, with a heartbeat per running trial.

    Workers starting together on an empty database race to create Optuna's tables (optuna#1092); the loser
    finds them made on its next attempt.
    """
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs={"pool_pre_ping": True},  # trials outlast idle connections
                    heartbeat_interval=heartbeat_seconds,
                    grace_period=GRACE_BEATS * heartbeat_seconds,
                )
        except SQLAlchemyError as exc:
            if attempt == attempts:
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                raise StageError(
                    f"distill: cannot open the study database {redact_url(url)}: {reason}. Check that the "
                    f"server is running and reachable from this machine, and the URL's user, host, port and "
                    f"database (a PostgreSQL password can come from PGPASSWORD or ~/.pgpass)."
                ) from None
            time.sleep(attempt + random.random())
    raise AssertionError("unreachable")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def check_inputs(study: optuna.Study, inputs: dict[str, str], cache_hint: str) -> None:
    """Record `inputs` on a new study; refuse to join a study that began with other ones.

    `cache_hint`: the folder a worker copies to get the first worker's teacher.
    """
    if INPUTS_ATTR not in study.user_attrs:
        study.set_user_attr(INPUTS_ATTR, inputs)
    first = study.user_attrs[INPUTS_ATTR]  # read back: of two workers writing at once, the later one wins
    differ = [key for key, value in inputs.items() if first.get(key) != value]
    if differ:
        raise StageError(
            f"distill: the shared study {study.study_name!r} was started with another {' and '.join(differ)} "
            f"than this worker's. Every worker of one study needs the same data, the same recipe and the same "
            f"teacher: teachers fine-tuned on two machines differ, so copy the first worker's {cache_hint} "
            f"into this machine's cache. Or give this search its own study: --set search.study_name=NEW_NAME."
        )


def claim(trial: optuna.Trial, total: int) -> None:
    """Sign the trial with this worker; fail it unrun if `total` trials were already counted before it.

    Optuna numbers trials under a lock on the study, so this count sees every trial created before this one.
    """
    trial.set_user_attr("worker", worker_id())
    earlier = [t for t in trial.study.get_trials(deepcopy=False, states=_COUNTED) if t.number < trial.number]
    if len(earlier) >= total:
        raise BudgetSpent(f"trial {trial.number}: the study had its {total} trials before this one started")


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    total: int,
    deadline: float,
    poll_seconds: float,
) -> None:
    """Run trials until the study has `total` finished or running ones (or `deadline`, a time.monotonic()
    value, passes), then wait until none runs anywhere, so every worker ends with the same trials."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="search", unit="trial") as bar:
        waited_on: list[int] = []
        while True:
            _fail_stale(study)
            counted = study.get_trials(deepcopy=False, states=_COUNTED)
            running = [t for t in counted if t.state == TrialState.RUNNING]
            bar.update(len(counted) - len(running) - bar.n)
            if len(counted) < total and time.monotonic() < deadline:
                _run_one(study, objective)
            elif running:
                numbers = [t.number for t in running]
                if numbers != waited_on:
                    log.info("distill: waiting for other workers' trials %s to finish", numbers)
                    waited_on = numbers
                time.sleep(poll_seconds)
            else:
                return


def _run_one(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> None:
    try:
        study.optimize(objective, n_trials=1, catch=(BudgetSpent,))
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning(
            "distill: another worker marked this worker's trial failed while it ran (its heartbeat came late: "
            "a stalled machine or network); its result is dropped and the search goes on"
        )


def _fail_stale(study: optuna.Study) -> None:
    """Mark FAIL the running trials whose worker stopped beating (a no-op without a heartbeat)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def trials_record(study: optuna.Study) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "value": t.value,
            "intermediate": t.intermediate_values,
            "worker": t.user_attrs.get("worker"),
            "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
            if t.datetime_complete and t.datetime_start
            else None,
        }
        for t in study.trials
    ]
