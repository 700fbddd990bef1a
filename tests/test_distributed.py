"""Data-parallel training over MPI: P ranks follow the single-process run, failures stop the job.

The multi-rank runs are ``mpirun`` launches of ``tests/mpi_worker.py`` (1 OpenMP thread per
rank); they skip with a reason where mpi4py or mpirun is absent.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import sparseft as sft

from . import mpi_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).with_name("mpi_worker.py")


def _mpirun() -> list[str]:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip('mpi4py is not installed (pip install "sparseft[mpi]")')
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpirun/mpiexec on PATH")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    cmd = [exe]
    if "Open MPI" in version or "OpenRTE" in version or "prte" in version.lower():
        cmd += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return cmd


def _launch(n: int, scenario: str, out: pathlib.Path, timeout: float = 120) -> tuple[int, str, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    p = subprocess.run(
        [*_mpirun(), "-n", str(n), sys.executable, str(WORKER), scenario, str(out)],
        capture_output=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    text = (p.stdout + p.stderr).decode("utf-8", "replace")
    return p.returncode, text, time.monotonic() - t0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A 2-rank run (saving a checkpoint mid-way), then a 4-rank run that also repeats the run on
    a 1-rank communicator and resumes the 2-rank checkpoint on 4 ranks."""
    out = tmp_path_factory.mktemp("mpi")
    for n, scenario in ((2, "train"), (4, "train+")):
        rc, text, _ = _launch(n, scenario, out)
        assert rc == 0, text[-4000:]
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    """The single-process run without a communicator, global batch B, on 1 thread as the ranks
    (results are deterministic for a fixed thread count)."""
    threads = sft.get_num_threads()
    sft.set_num_threads(1)
    try:
        tr = mpi_worker.make_trainer(None)
        mpi_worker.fit(tr)
        return mpi_worker.result(tr)
    finally:
        sft.set_num_threads(threads)


def _params(res) -> dict[str, np.ndarray]:
    return {k: res[k] for k in res if k.startswith("param.")}


@pytest.mark.mpi
def test_one_rank_communicator_is_bit_identical_to_no_communicator(runs, reference) -> None:
    res = np.load(runs / "result_self.npz")
    assert np.array_equal(res["loss"], reference["loss"])
    assert np.array_equal(res["eval_loss"], reference["eval_loss"])
    ref = _params(reference)
    assert set(_params(res)) == set(ref) and ref
    for k, v in ref.items():
        assert np.array_equal(res[k], v), k


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["result_2", "result_4", "resume_4"])
def test_ranks_follow_the_single_process_run(runs, reference, name) -> None:
    """P ranks with global batch B against one process with batch B (same seed, same windows).

    Not bit-identical for P > 1: each rank averages the loss over its B/P rows and the GEMMs of
    the weight gradients sum over those rows only, so the float32 sums over the batch are taken
    in another order (per rank, then across ranks). The ranks agree bit for bit with each other.
    """
    res = np.load(runs / f"{name}.npz")
    assert len(res["digests"]) == int(name[-1]) and len(set(res["digests"])) == 1  # ranks bit-identical
    np.testing.assert_allclose(res["loss"], reference["loss"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(res["eval_loss"], reference["eval_loss"], rtol=1e-5, atol=0)
    ref = _params(reference)
    moved = 0.0
    for k, v in ref.items():
        np.testing.assert_allclose(res[k], v, rtol=1e-4, atol=2e-6, err_msg=k)
        moved = max(moved, float(np.abs(v).max()))
    assert moved > 1e-3  # the adapters trained: the comparison is not between zeros


@pytest.mark.mpi
def test_rank0_writes_the_checkpoint_and_it_resumes_on_another_rank_count(runs) -> None:
    for n in (2, 4):
        tr = sft.Trainer.load(runs / f"ckpt_{n}")
        assert tr.step == mpi_worker.SAVE_AT and tr.world_size == 1
    assert sorted(p.name for p in (runs / "peft_2").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not any(p.name.startswith(".") for p in runs.iterdir())  # no temporary left behind


@pytest.mark.mpi
@pytest.mark.parametrize("scenario", ["raise", "die", "hang"])
def test_a_failing_rank_stops_the_others_within_seconds(tmp_path, scenario) -> None:
    rc, text, seconds = _launch(2, scenario, tmp_path, timeout=90)
    assert rc != 0
    assert seconds < 45, f"the job took {seconds:.0f} s to stop"
    if scenario == "raise":
        assert "rank 1/2 failed, aborting all ranks" in text and "injected failure on rank 1" in text
    elif scenario == "hang":
        assert "rank 0/2: gradient all-reduce did not complete within 3 s" in text


def test_comm_without_mpi4py_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    with pytest.raises(ImportError, match=r'pip install "sparseft\[mpi\]"'):
        mpi_worker.make_trainer(object())


def test_bad_sync_weights_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="sync_weights"):
        sft.Trainer(sft.models.GPT.random(mpi_worker.CONFIG, seed=0), sync_weights="maybe")
