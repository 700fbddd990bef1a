"""A data-parallel training run launched by tests/test_distributed.py under ``mpirun -n P``.

``python tests/mpi_worker.py SCENARIO OUTDIR``:

- ``train``: fit the tiny GPT with LoRS adapters on all ranks; save a checkpoint after step
  ``SAVE_AT`` (OUTDIR/ckpt_P) and the result (OUTDIR/result_P.npz, written by rank 0).
- ``train+``: as ``train``; then rank 0 repeats the run alone on ``MPI.COMM_SELF`` (result_self),
  and all ranks resume OUTDIR/ckpt_2 (saved by a 2-rank run) to the end (resume_P.npz).
  ``train`` also checks bad input on every rank: differing start weights (an error, or
  repaired with ``sync_weights="broadcast"``) and a batch that does not split across the ranks.
- ``raise``: rank 1 raises in a callback at step 2; the job must end with an error.
- ``die``: rank 1 is killed (SIGKILL) at step 2; the job must end with an error.
- ``hang``: rank 1 stops calling collectives (sleeps) at step 2; the others must time out.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import time
import warnings

import numpy as np
from mpi4py import MPI

import sparseft as sft
from sparseft.data import builtin_corpus
from sparseft.distributed import DataParallel, weights_digest

TEXT = builtin_corpus()[:30000]
EVAL = builtin_corpus()[30000:31000]
STEPS, BATCH, SEQ, ACCUMULATE, SAVE_AT = 4, 4, 16, 2, 2
CONFIG = sft.models.GPTConfig(vocab_size=256, n_layer=2, n_head=2, d_model=32, seq_len=32)


def make_trainer(comm: object) -> sft.Trainer:
    """The run every test compares: same model, adapter, seed and settings on every rank."""
    model = sft.models.GPT.random(CONFIG, seed=0)
    return sft.Trainer(
        model,
        adapter=sft.LoRSConfig(r=4, alpha=8),
        lr=2e-2,
        warmup=1,
        accumulate=ACCUMULATE,
        seed=0,
        comm=comm,
    )


def fit(tr: sft.Trainer, callbacks: tuple = ()) -> None:
    tr.fit(
        TEXT, steps=STEPS, batch_size=BATCH, seq_len=SEQ, progress=False, eval_data=EVAL, callbacks=callbacks
    )


def result(tr: sft.Trainer) -> dict[str, np.ndarray]:
    """Losses, evaluation, parameters, and every rank's parameter digest (all ranks call it)."""
    params = tr.model.parameters()
    digests = tr.dp.comm.allgather(weights_digest(params)) if tr.dp is not None else []
    out = {f"param.{k}": v.copy() for k, v in params.items()}
    out["loss"] = np.array(tr.history.loss)
    out["eval_loss"] = np.array(tr.history.eval_loss)
    out["digests"] = np.array(digests)
    return out


def check_bad_input(comm: object, rank: int) -> None:
    """Every rank sees the same error for differing weights and for an unsplittable batch."""
    model = sft.models.GPT.random(CONFIG, seed=rank)  # a different base on each rank
    try:
        sft.Trainer(model, adapter=sft.LoRSConfig(r=4), comm=comm)
    except ValueError as e:
        assert "differ from rank 0" in str(e), e
    else:
        raise AssertionError("differing weights were not detected")
    model = sft.models.GPT.random(CONFIG, seed=rank)
    tr = sft.Trainer(model, adapter=sft.LoRSConfig(r=4), comm=comm, sync_weights="broadcast")
    assert weights_digest(model.state_dict()) == weights_digest(
        sft.models.GPT.random(CONFIG, seed=0).state_dict()
    )
    try:
        tr.fit(TEXT, steps=1, batch_size=3, seq_len=SEQ, progress=False)
    except ValueError as e:
        assert "multiple of the 2 ranks" in str(e), e
    else:
        raise AssertionError("batch_size=3 on 2 ranks was accepted")
    for kwargs, error in (({"timeout": 0}, ValueError), ({"bucket_bytes": 2}, ValueError)):
        try:
            DataParallel(comm, **kwargs)
        except error as e:
            assert next(iter(kwargs)) in str(e), e
        else:
            raise AssertionError(f"DataParallel accepted {kwargs}")
    try:
        DataParallel("comm")
    except TypeError as e:
        assert "mpi4py.MPI.Intracomm" in str(e), e
    else:
        raise AssertionError("DataParallel accepted a str")


def main() -> None:
    scenario, outdir = sys.argv[1], pathlib.Path(sys.argv[2])
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if scenario in ("train", "train+"):
        if scenario == "train" and size == 2:
            check_bad_input(comm, rank)
        tr = make_trainer(comm)

        def save(t: sft.Trainer, rec: dict) -> None:
            if rec["step"] == SAVE_AT:
                t.save(outdir / f"ckpt_{size}")

        fit(tr, (save,))
        assert tr.dp is not None and tr.dp.n_buckets >= 1 and tr.dp.overlapped >= tr.dp.n_buckets - 1
        small = make_trainer(DataParallel(comm, bucket_bytes=4096))  # started during the backward
        small.fit(TEXT, steps=1, batch_size=BATCH, seq_len=SEQ, progress=False)
        assert (
            small.dp is not None and small.dp.n_buckets > 2 and small.dp.overlapped >= small.dp.n_buckets - 1
        )
        res = result(tr)
        if scenario == "train":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # PEFT's unmasked adapter (documented)
                names = tr.export_peft(outdir / f"peft_{size}")
            assert names and names == comm.bcast(names, root=0)  # every rank gets rank 0's answer
        if rank == 0:
            np.savez(outdir / f"result_{size}.npz", **res)
        if scenario == "train+":
            if rank == 0:
                alone = make_trainer(MPI.COMM_SELF)
                fit(alone)
                np.savez(outdir / "result_self.npz", **result(alone))
            resumed = sft.Trainer.load(outdir / "ckpt_2", comm=comm)
            fit(resumed)
            res = result(resumed)
            if rank == 0:
                np.savez(outdir / f"resume_{size}.npz", **res)
    elif scenario in ("raise", "die", "hang"):
        tr = make_trainer(DataParallel(comm, timeout=3.0))

        def fail(t: sft.Trainer, rec: dict) -> None:
            if rank == 1 and rec["step"] == 2:
                if scenario == "raise":
                    raise ValueError("injected failure on rank 1")
                if scenario == "die":
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(60)

        fit(tr, (fail,))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()
