"""Runs ``_core`` calls in a child process, so that a crash or a hang is a recorded outcome and not
the end of the test run. The child builds every array argument against a guard page (see
``guard.py``), hashes the inputs before and after the call, and sends back what happened.

Arguments travel as pickles; markers (below) ask the child for layouts that pickling would lose:
strided views, misaligned buffers, read-only arrays and arrays that share memory."""

from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


# ---- markers: layouts built in the child ------------------------------------------------------


@dataclass(frozen=True)
class Strided:
    """A view of ``a`` with every other element of the last axis (not C-contiguous)."""

    a: np.ndarray


@dataclass(frozen=True)
class Misaligned:
    """A copy of ``a`` starting one byte past an aligned address (C-contiguous, unaligned)."""

    a: np.ndarray


@dataclass(frozen=True)
class ReadOnly:
    """A guarded copy of ``a`` with the writeable flag cleared."""

    a: np.ndarray


@dataclass(frozen=True)
class Alias:
    """The array argument number ``index`` (in the order the arguments are walked) itself, or a view
    of its flat buffer shifted by ``shift`` elements and reshaped to ``shape`` (overlapping memory)."""

    index: int
    shift: int = 0
    shape: tuple[int, ...] | None = None


@dataclass
class Call:
    """One call of ``sparseft._core.<fn>`` (or of ``"module:qualname"``); ``outputs``: labels of the
    arguments it may write ("arg0", "out", "arg0[5]" for an item of a tuple argument)."""

    fn: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    outputs: frozenset[str] = frozenset()
    guard: str = "end"
    threads: int | None = None
    simd: str | None = None


@dataclass
class Outcome:
    """What a call did: ``kind`` is "ok", "raised", "crashed" (signal or exit code) or "hung"."""

    kind: str
    exc_type: str = ""
    message: str = ""
    result: Any = None
    modified: list[str] = field(default_factory=list)
    detail: str = ""


# ---- the child side ---------------------------------------------------------------------------


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).view(np.uint8).tobytes()).hexdigest()


def _materialize(obj: Any, label: str, arrays: list[tuple[str, np.ndarray]], guard: str) -> Any:
    """Builds the call's arguments in the child; records every array (label, array) in ``arrays``."""
    from tests.fuzz.guard import guarded

    if isinstance(obj, tuple):
        return tuple(_materialize(o, f"{label}[{i}]", arrays, guard) for i, o in enumerate(obj))
    if isinstance(obj, Alias):
        src = arrays[obj.index][1]
        if obj.shift == 0 and obj.shape is None:
            out = src
        else:
            flat = src.reshape(-1)
            shape = obj.shape if obj.shape is not None else src.shape
            count = int(np.prod(shape))
            out = flat[obj.shift : obj.shift + count].reshape(shape)
    elif isinstance(obj, Strided):
        a = np.asarray(obj.a)
        wide = np.repeat(a, 2, axis=-1) if a.ndim else a
        out = guarded(wide, guard)[..., ::2] if a.ndim else a
    elif isinstance(obj, Misaligned):
        a = np.ascontiguousarray(obj.a)
        raw = guarded(np.zeros(a.nbytes + 1, np.uint8), guard)
        # one byte off the page-aligned end (or start) of the guarded buffer
        part = raw[:-1] if guard == "end" else raw[1:]
        out = part.view(a.dtype).reshape(a.shape)
        out[...] = a
    elif isinstance(obj, ReadOnly):
        out = guarded(obj.a, guard, readonly=True)
    elif isinstance(obj, np.ndarray):
        if obj.flags.c_contiguous and obj.dtype.isnative and obj.dtype != object:
            out = guarded(obj, guard)
        else:
            out = obj
    else:
        return obj
    arrays.append((label, out))
    return out


def run_call(call: Call) -> Outcome:
    """Runs one call in this process (the child's work; tests may call it directly too)."""
    import sparseft
    from sparseft import _core

    arrays: list[tuple[str, np.ndarray]] = []
    args = tuple(_materialize(a, f"arg{i}", arrays, call.guard) for i, a in enumerate(call.args))
    kwargs = {k: _materialize(v, k, arrays, call.guard) for k, v in call.kwargs.items()}
    before = [_digest(a) for _, a in arrays]
    prev_threads = _core.get_num_threads()
    try:
        if call.threads is not None:
            _core.set_num_threads(call.threads)
        fn = _resolve(call.fn)
        if call.simd is not None:
            with sparseft.simd_path(call.simd):
                result = fn(*args, **kwargs)
        else:
            result = fn(*args, **kwargs)
    except BaseException as e:
        outcome = Outcome("raised", type(e).__name__, str(e))
    else:
        outcome = Outcome("ok", result=_portable(result))
    finally:
        _core.set_num_threads(prev_threads)
    outcome.modified = [
        label
        for (label, a), h in zip(arrays, before, strict=False)
        if _digest(a) != h and label not in call.outputs
    ]
    if outcome.kind == "ok" and call.outputs:
        outcome.result = (
            outcome.result,
            {label: np.array(a) for label, a in arrays if label in call.outputs},
        )
    return outcome


def _resolve(name: str) -> Any:
    """``"sparse_forward"`` -> ``sparseft._core.sparse_forward``; ``"pkg.mod:obj.attr"`` -> that object."""
    import importlib

    from sparseft import _core

    if ":" not in name:
        return getattr(_core, name)
    mod, _, path = name.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _portable(x: Any) -> Any:
    """A result that pickles without the child's guard mappings."""
    if isinstance(x, np.ndarray):
        return np.array(x)
    if isinstance(x, tuple):
        return tuple(_portable(v) for v in x)
    return x


def _send(stream: Any, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _recv(stream: Any) -> Any:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    (n,) = struct.unpack("<Q", head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def main() -> None:
    """The child's loop: read a Call, send back its Outcome, until stdin closes."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the reply stream
    while True:
        try:
            call = _recv(inp)
        except EOFError:
            return
        _send(out, run_call(call))


# ---- the parent side --------------------------------------------------------------------------


class Worker:
    """A child process that runs Calls one at a time; it is restarted after a crash or a hang."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("OMP_NUM_THREADS", "2")
        return subprocess.Popen(
            [sys.executable, "-c", "from tests.fuzz.child import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(ROOT),
            env=env,
        )

    def call(self, call: Call) -> Outcome:
        """Runs ``call`` in the child; a dead or silent child becomes a "crashed"/"hung" Outcome."""
        import threading

        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        box: dict[str, Any] = {}

        def talk() -> None:
            try:
                _send(proc.stdin, call)
                box["outcome"] = _recv(proc.stdout)
            except (EOFError, BrokenPipeError, OSError) as e:
                box["error"] = e

        t = threading.Thread(target=talk, daemon=True)
        t.start()
        t.join(self.timeout)
        if t.is_alive():
            proc.kill()
            proc.wait()
            self.proc = None
            return Outcome("hung", detail=f"no answer within {self.timeout:.0f} s")
        if "outcome" in box:
            return box["outcome"]
        rc = proc.wait()
        err = proc.stderr.read().decode(errors="replace")[-4000:] if proc.stderr else ""
        self.proc = None
        return Outcome("crashed", detail=f"exit status {rc} (negative: signal)\n{err}")

    def close(self) -> None:
        """Ends the child."""
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
