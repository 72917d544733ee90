"""A search shared by build workers on a real PostgreSQL server: each worker is an `edgepack build` process, as on
separate machines, with its own cache holding a copy of one teacher (as the README says to do).

The server is not started here: `.ci/postgres.sh` starts one and exports EDGEPACK_TEST_POSTGRES_URL (`.ci/run`
does; locally `source .ci/postgres.sh`). Without it these tests skip, except in CI, where they must run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from sqlalchemy.engine import make_url

from edgepack import teacher
from edgepack.cache import Cache
from edgepack.data import load_splits
from edgepack.errors import RecipeError, StageError
from edgepack.recipe import SearchConfig, load_recipe
from edgepack.study import BudgetSpent, check_inputs, check_storage_url, claim

URL_VARIABLE = "EDGEPACK_TEST_POSTGRES_URL"
WORKER_SECONDS = 900  # far beyond a tiny build; only a hang reaches it


@pytest.fixture()
def postgres_url() -> str:
    url = os.environ.get(URL_VARIABLE)
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{URL_VARIABLE} is not set: in CI, .ci/run starts PostgreSQL (.ci/postgres.sh) for this test"
        )
    pytest.skip(f"no PostgreSQL server: {URL_VARIABLE} is not set (start one with `source .ci/postgres.sh`)")


@pytest.fixture()
def study_name(postgres_url: str) -> Iterator[str]:
    """A study of its own per test run, deleted afterwards (a developer's server may outlive the test)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(KeyError):  # KeyError: the workers never got as far as creating it
        optuna.delete_study(study_name=name, storage=postgres_url)


@pytest.fixture()
def first_machine(tmp_path: Path, tiny_recipe: Path) -> Path:
    """A cache holding the recipe's fine-tuned teacher, built once, as the first machine would."""
    recipe = load_recipe(str(tiny_recipe))
    cache = Cache(tmp_path / "first-machine")
    teacher.run(load_splits(recipe.data), recipe.teacher, recipe.data.max_length, cache)
    return cache.root


class Worker:
    """`edgepack build` in its own process with its own cache (a copy of the first machine's teacher), joining
    the study. The database password travels as PGPASSWORD, not on the command line, as the README advises."""

    def __init__(
        self, name: str, tmp: Path, recipe: Path, first_machine: Path, url: str, settings: list[str]
    ) -> None:
        cache = tmp / f"{name}-cache"
        cache.mkdir()
        for folder in first_machine.glob("teacher-*"):
            shutil.copytree(folder, cache / folder.name)
        parsed = make_url(url)
        env = os.environ | {
            "PGPASSWORD": parsed.password or "",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        }
        storage = parsed.set(password=None).render_as_string(hide_password=False)
        self.bundle = tmp / "bundles" / name
        self.log = tmp / f"{name}.log"
        command = [sys.executable, "-m", "edgepack.cli", "build", "--recipe", str(recipe)]
        command += ["--study-storage", storage, "--name", name, "--set", f"cache_dir={cache}"]
        for setting in settings:
            command += ["--set", setting]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def id_suffix(self) -> str:
        return f":{self.process.pid}"  # edgepack.study.worker_id() is HOST:PID

    def finish(self) -> dict:
        """Wait for the build; its manifest."""
        code = self.process.wait(timeout=WORKER_SECONDS)
        assert code == 0, f"worker exited {code}:\n{self.log.read_text()[-4000:]}"
        return json.loads((self.bundle / "manifest.json").read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture()
def workers() -> Iterator[list[Worker]]:
    """The workers a test starts; any still running at its end (a failed assertion) is killed."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def _search_settings(study_name: str, trials: int, epochs: tuple[int, int], heartbeat: int) -> list[str]:
    return [
        f"search.study_name={study_name}",
        f"search.trials={trials}",
        f"search.epochs=[{epochs[0]}, {epochs[1]}]",
        "search.pruner=none",  # every trial runs to its end: trials last long enough to be killed in
        "search.train_fraction=1.0",
        "search.timeout_minutes=15",
        f"search.heartbeat_seconds={heartbeat}",  # a trial silent for 3 beats is failed
    ]


def _params(trial: optuna.trial.FrozenTrial) -> tuple:
    return tuple(sorted(trial.params.items()))


@pytest.mark.slow
def test_two_workers_split_one_study_and_agree_on_the_best(
    tmp_path: Path,
    tiny_recipe: Path,
    first_machine: Path,
    postgres_url: str,
    study_name: str,
    workers: list[Worker],
) -> None:
    total = 6
    settings = _search_settings(study_name, total, (8, 12), heartbeat=2)  # ~20 s of trials
    for name in ("alpha-box", "beta-box"):
        workers.append(Worker(name, tmp_path, tiny_recipe, first_machine, postgres_url, settings))
    manifests = [worker.finish() for worker in workers]

    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == total, [(t.number, t.state.name) for t in study.trials]
    # Anything else is a trial created past the budget by two workers racing for the last place: never trained.
    assert all(not t.params and t.state.name == "FAIL" for t in study.trials if t not in complete)
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert len({_params(t) for t in complete}) == total  # no point sampled twice
    by_worker = {
        w.process.pid: [t.number for t in complete if t.user_attrs["worker"].endswith(w.id_suffix)]
        for w in workers
    }
    assert all(by_worker.values()) and sum(map(len, by_worker.values())) == total, by_worker

    best = study.best_trial
    for manifest in manifests:
        search = manifest["distillation"]["search"]
        assert (search["best_trial"], search["best_value"]) == (best.number, best.value)
        assert search["study_name"] == study_name and len(search["trials"]) == len(study.trials)
        assert {k: manifest["distillation"]["settings"][k] for k in best.params} == best.params
        assert str(make_url(postgres_url).password) not in json.dumps(manifest)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_a_failed_trial_and_the_search_goes_on(
    tmp_path: Path,
    tiny_recipe: Path,
    first_machine: Path,
    postgres_url: str,
    study_name: str,
    workers: list[Worker],
) -> None:
    total = 4
    settings = _search_settings(study_name, total, (12, 16), heartbeat=1)
    for name in ("survivor", "victim"):
        workers.append(Worker(name, tmp_path, tiny_recipe, first_machine, postgres_url, settings))
    survivor, victim = workers
    storage = optuna.storages.RDBStorage(postgres_url)
    killed = _kill_mid_trial(victim, study_name, storage)

    manifest = survivor.finish()
    study = optuna.load_study(study_name=study_name, storage=storage)
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed] == "FAIL", states  # failed by the survivor once the victim's heartbeat stopped
    assert sum(s == "COMPLETE" for s in states.values()) == total, states  # the survivor filled its place
    assert not [s for s in states.values() if s == "RUNNING"]
    assert max(t.number for t in study.trials if t.state.name == "COMPLETE") > killed  # it went on after
    best = study.best_trial
    assert best.number != killed and best.state.name == "COMPLETE"
    assert manifest["distillation"]["search"]["best_trial"] == best.number


def _kill_mid_trial(victim: Worker, study_name: str, storage: optuna.storages.RDBStorage) -> int:
    """SIGKILL the victim once one of its trials has reported an epoch; that trial's number."""
    deadline = time.monotonic() + WORKER_SECONDS
    while time.monotonic() < deadline:
        assert victim.process.poll() is None, (
            f"the victim ended before it was killed:\n{victim.log.read_text()[-4000:]}"
        )
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
        except KeyError:  # no study yet
            trials = []
        mine = [
            t
            for t in trials
            if t.state.name == "RUNNING"
            and t.intermediate_values
            and t.user_attrs.get("worker", "").endswith(victim.id_suffix)
        ]
        if mine:
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait()
            number = mine[0].number
            after = optuna.load_study(study_name=study_name, storage=storage).trials
            assert after[number].state.name == "RUNNING", (
                "the trial ended before the kill: make trials longer"
            )
            return number
        time.sleep(0.2)
    raise AssertionError("the victim never ran a trial")


def test_a_database_url_without_its_driver_names_the_extra() -> None:
    if importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed here: no missing driver to report")
    with pytest.raises(
        RecipeError, match=r"driver 'psycopg2'.*pip install psycopg2-binary.*edgepack\[search-db\]"
    ):
        check_storage_url("postgresql+psycopg2://someone@db.example:5432/search")


def test_a_manifest_never_carries_the_database_password(tiny_recipe: Path) -> None:
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("the search-db extra is not installed")
    recipe = load_recipe(
        str(tiny_recipe), {"search.storage": "postgresql://someone:s3cret@db.example/search"}
    )
    assert recipe.to_dict()["search"]["storage"] == "postgresql://someone:***@db.example/search"
    assert (
        recipe.search.storage == "postgresql://someone:s3cret@db.example/search"
    )  # the build still connects
    with pytest.raises(RecipeError, match="is not a database URL"):
        SearchConfig(storage="not a url")


def test_a_trial_created_past_the_budget_never_trains() -> None:
    """Two workers racing for the last place: the later trial (by number) is refused before it trains."""
    study = optuna.create_study()
    first, second = study.ask(), study.ask()  # both created while the study had 0 of its 1 trial
    claim(first, total=1)
    with pytest.raises(BudgetSpent, match="had its 1 trials before this one started"):
        claim(second, total=1)
    for trial in (second, first):  # refused, then its worker killed: failed trials free their places
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    claim(study.ask(), total=1)


def test_a_worker_with_another_teacher_is_refused() -> None:
    study = optuna.create_study(study_name="shared")
    inputs = {"data and teacher settings": "k1", "teacher weights": "w1"}
    check_inputs(study, inputs, "teacher cache folder teacher-k1")
    check_inputs(study, dict(inputs), "teacher cache folder teacher-k1")  # the same inputs join
    with pytest.raises(
        StageError, match=r"started with another teacher weights.*copy the first worker's teacher"
    ):
        check_inputs(study, inputs | {"teacher weights": "w2"}, "teacher cache folder teacher-k1")
