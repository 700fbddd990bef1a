"""``mpirun -n P python tests/lors_init_mpi_worker.py OUT.npz``: the "lors" init on P ranks.

Every rank builds the same pruned GPT with ``LoRSConfig(init="lors")``, runs
``Trainer.init_lors`` (global batch 4) and rank 0 writes every adapter's A and each rank's digest
of them; tests/test_lors_init.py compares with the single-process init.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
from mpi4py import MPI

import sparseft as sft
from sparseft.data import builtin_corpus
from sparseft.train.lors_init import adapted_layers

TEXT = builtin_corpus()[:20000]
CONFIG = sft.models.GPTConfig(vocab_size=256, n_layer=1, n_head=2, d_model=32, seq_len=16)


def init(comm: object) -> dict[str, np.ndarray]:
    model = sft.models.GPT.random(CONFIG, seed=0)
    sft.sparsify(model, sparsity=0.5, method="magnitude")
    tr = sft.Trainer(model, adapter=sft.LoRSConfig(r=2, init="lors"), seed=0, comm=comm)
    tr.init_lors(TEXT, batches=2, batch_size=4, seq_len=16)
    return {n: L.A.copy() for n, L in adapted_layers(model).items()}


if __name__ == "__main__":
    sft.set_num_threads(1)
    comm = MPI.COMM_WORLD
    A = init(comm)
    digest = hashlib.sha256(b"".join(a.tobytes() for a in A.values())).hexdigest()
    digests = comm.allgather(digest)
    if comm.Get_rank() == 0:
        np.savez(sys.argv[1], digests=np.array(digests), **A)
