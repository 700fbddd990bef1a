"""Data-parallel training over MPI: sharded batches and bucketed, overlapped gradient averaging.

Every rank holds the whole model, draws the same global batch from the same seeded sampler and
trains on its own contiguous slice of rows; the trainable gradients are averaged with in-place
``Iallreduce`` on flat float32 buckets, each started as soon as the backward pass has produced
all of its gradients, so communication overlaps the rest of the backward. Requests are waited on
with a timeout: a rank that dies, raises or hangs makes the others stop with an error (and
``comm.Abort``) instead of blocking forever. See ``docs/distributed.md``.

mpi4py is optional (``pip install "sparseft[mpi]"``); nothing here imports it until a
communicator is used.
"""

from __future__ import annotations

import hashlib
import sys
import time
import traceback
from typing import Any

import numpy as np

__all__ = ["DataParallel", "init", "weights_digest"]

INSTALL_HINT = 'data-parallel training needs mpi4py and an MPI: pip install "sparseft[mpi]"'

#: Default bucket size (bytes of float32 gradients per Iallreduce).
BUCKET_BYTES = 4 << 20

#: Default seconds a rank waits for the others before it declares the job broken.
TIMEOUT = 600.0


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return MPI


def init() -> Any:
    """Initialize MPI (under ``mpirun``/``mpiexec``/``srun``) and return ``MPI.COMM_WORLD``.

    Returns
    -------
    mpi4py.MPI.Intracomm
        The world communicator, to pass as ``Trainer(..., comm=...)``.

    Raises
    ------
    ImportError
        Without mpi4py, saying what to install.
    """
    return _mpi().COMM_WORLD


def weights_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``arrays`` in sorted key order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


class DataParallel:
    """An MPI communicator as the Trainer uses it: shards, gradient buckets, reductions, failure.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The ranks that train together (e.g. :func:`init`'s ``COMM_WORLD``).
    timeout : float
        Seconds to wait for the other ranks in any one collective before raising and aborting
        the job. It must exceed the largest step-time difference between ranks.
    bucket_bytes : int
        Gradient bytes per ``Iallreduce`` (buckets hold whole parameters, in backward order).

    Attributes
    ----------
    rank, size : int
    bytes_per_step : int
        Gradient bytes each rank contributes to the all-reduces of one optimizer step (the
        trainable parameters' float32 gradients; a ring all-reduce moves about
        ``2 (P - 1) / P`` times this over each rank's link).
    n_buckets, overlapped : int
        Buckets per step, and how many of them the last step started while its backward pass
        was still running (the rest start after it).
    """

    def __init__(self, comm: Any, timeout: float = TIMEOUT, bucket_bytes: int = BUCKET_BYTES) -> None:
        MPI = _mpi()
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"comm: expected an mpi4py.MPI.Intracomm, got {type(comm).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 4:
            raise ValueError(f"bucket_bytes: expected an int >= 4, got {bucket_bytes!r}")
        self.MPI = MPI
        self.comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        self.timeout = float(timeout)
        self.bucket_bytes = bucket_bytes
        self.bytes_per_step = 0
        self.n_buckets = 0
        self.overlapped = 0
        self._buckets: list[_Bucket] = []
        self._op_bucket: dict[int, list[_Bucket]] = {}
        self._armed = False

    # ------------------------------------------------------------ sharding
    def shard(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of ``batch_size`` rows (contiguous, equal shares).

        Raises
        ------
        ValueError
            If ``batch_size`` is not a multiple of the number of ranks.
        """
        if batch_size % self.size:
            raise ValueError(
                f"batch_size: the global batch {batch_size} must be a multiple of the {self.size} ranks"
            )
        n = batch_size // self.size
        return slice(self.rank * n, (self.rank + 1) * n)

    # ------------------------------------------------------------ waiting
    def _wait(self, reqs: list[Any], what: str) -> None:
        """Complete ``reqs``, raising RuntimeError after ``timeout`` seconds without completion."""
        if not reqs:
            return
        deadline = time.monotonic() + self.timeout
        pause = 1e-5
        while not self.MPI.Request.Testall(reqs):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"rank {self.rank}/{self.size}: {what} did not complete within {self.timeout:g} s; "
                    "another rank died, raised or hangs"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    def allreduce_sum(self, values: np.ndarray, what: str = "reduction") -> np.ndarray:
        """Sum of ``values`` (float64, any shape) over the ranks, with the timeout."""
        buf = np.ascontiguousarray(values, dtype=np.float64).copy()
        self._wait([self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)], what)
        return buf

    def barrier(self, what: str = "barrier") -> None:
        """All ranks reach this point (with the timeout)."""
        self._wait([self.comm.Ibarrier()], what)

    # ------------------------------------------------------------ weights
    def check_weights(self, state: dict[str, np.ndarray], broadcast: bool) -> bool:
        """Compare ``state``'s digest across ranks; with ``broadcast``, copy rank 0's arrays into
        every rank's (in place) when they differ. Returns whether a broadcast happened.

        Raises
        ------
        ValueError
            On every rank, naming the ranks that differ from rank 0, when the weights differ and
            ``broadcast`` is false; or when the arrays' names or shapes differ.
        """
        digest = weights_digest(state)
        layout = [(k, state[k].dtype.str, state[k].shape) for k in sorted(state)]
        digests = self.comm.allgather((digest, layout))
        if any(d[1] != digests[0][1] for d in digests):
            raise ValueError("comm: the ranks' models have different parameter names, dtypes or shapes")
        differ = [r for r, d in enumerate(digests) if d[0] != digests[0][0]]
        if not differ:
            return False
        if not broadcast:
            raise ValueError(
                f"comm: ranks {differ} start from weights that differ from rank 0's (SHA-256 "
                f"{digests[0][0][:12]}...); load the same checkpoint on every rank, use the same "
                "seeds, or pass sync_weights='broadcast'"
            )
        reqs = [self.comm.Ibcast(state[k], root=0) for k in sorted(state)]
        self._wait(reqs, "weight broadcast")
        return True

    # ------------------------------------------------------------ gradient buckets
    def prepare(self, ops: list[Any], grads: dict[str, np.ndarray]) -> None:
        """Lay out gradient buckets for a model: parameters in backward (reverse op) order, cut
        into buckets of about ``bucket_bytes``; a bucket is started once every op contributing
        to it has run its backward. Gradients that no op's ``grads()`` owns go in a last bucket
        started after the backward pass.
        """
        owned: list[tuple[int, str, np.ndarray]] = []
        seen: set[str] = set()
        for i in range(len(ops) - 1, -1, -1):
            for k, g in ops[i].grads().items():
                key = f"{ops[i].name}.{k}"
                if key in grads and grads[key] is g and key not in seen:
                    owned.append((i, key, g))
                    seen.add(key)
        owned += [(-1, k, g) for k, g in grads.items() if k not in seen]
        for k, g in grads.items():
            if g.dtype != np.float32 or not g.flags.c_contiguous:
                raise TypeError(f"model: gradient {k!r} must be C-contiguous float32, got {g.dtype}")
        buckets: list[_Bucket] = []
        cur: list[tuple[int, str, np.ndarray]] = []
        size = 0
        for item in owned:
            if cur and (size + item[2].nbytes > self.bucket_bytes or (item[0] < 0) != (cur[-1][0] < 0)):
                buckets.append(_Bucket(cur))
                cur, size = [], 0
            cur.append(item)
            size += item[2].nbytes
        if cur:
            buckets.append(_Bucket(cur))
        self._buckets = buckets
        self._op_bucket = {}
        for b in buckets:
            for i in b.ops:
                if i >= 0:
                    self._op_bucket.setdefault(i, []).append(b)
        self.bytes_per_step = sum(b.flat.nbytes for b in buckets)
        self.n_buckets = len(buckets)

    def arm(self) -> None:
        """The next backward pass is the step's last: start buckets as their gradients complete."""
        for b in self._buckets:
            b.reset()
        self._armed = True
        self.overlapped = 0

    def on_backward(self, op_index: int) -> None:
        """Called by the executor after op ``op_index``'s backward (see :meth:`arm`)."""
        if not self._armed:
            return
        for b in self._op_bucket.get(op_index, ()):
            b.pending.discard(op_index)
            if not b.pending and b.request is None:
                b.start(self)
                self.overlapped += 1

    def finish(self, loss_sum: float) -> float:
        """Start the buckets not yet started, wait for all, and write the averages back into the
        gradient arrays (every rank then holds the same gradients). Returns ``loss_sum`` averaged
        over the ranks (reduced with the last bucket's request)."""
        self._armed = False
        for b in self._buckets:
            if b.request is None:
                b.start(self)
        loss = np.array([loss_sum], dtype=np.float64)
        reqs = [b.request for b in self._buckets]
        if self.size > 1:
            reqs.append(self.comm.Iallreduce(self.MPI.IN_PLACE, loss, op=self.MPI.SUM))
        self._wait(reqs, "gradient all-reduce")
        inv = np.float32(1.0 / self.size)
        for b in self._buckets:
            b.unpack(inv)
            b.request = None
        return float(loss[0]) / self.size

    # ------------------------------------------------------------ failure
    def abort(self, error: BaseException) -> None:
        """Print ``error`` with this rank's number and abort every rank of the communicator, so
        that no rank waits forever for this one (does nothing with a single rank)."""
        if self.size == 1:
            return
        sys.stderr.write(
            f"sparseft.distributed: rank {self.rank}/{self.size} failed, aborting all ranks:\n"
            + "".join(traceback.format_exception(type(error), error, error.__traceback__))
        )
        sys.stderr.flush()
        self.comm.Abort(1)


class _Bucket:
    """Gradients of whole parameters packed into one flat float32 buffer for one all-reduce."""

    def __init__(self, items: list[tuple[int, str, np.ndarray]]) -> None:
        self.items = items
        self.ops = sorted({i for i, _, _ in items})
        self.flat = np.empty(sum(g.size for _, _, g in items), dtype=np.float32)
        self.pending: set[int] = set()
        self.request: Any = None

    def reset(self) -> None:
        self.pending = {i for i in self.ops if i >= 0}
        self.request = None

    def start(self, dp: DataParallel) -> None:
        off = 0
        for _, _, g in self.items:
            self.flat[off : off + g.size] = g.reshape(-1)
            off += g.size
        self.request = dp.comm.Iallreduce(dp.MPI.IN_PLACE, self.flat, op=dp.MPI.SUM)

    def unpack(self, inv: np.float32) -> None:
        if inv != 1:
            self.flat *= inv
        off = 0
        for _, _, g in self.items:
            g.reshape(-1)[...] = self.flat[off : off + g.size]
            off += g.size
