"""``python -m sparseft rws extract|apply|info`` on safetensors files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import sparseft as sft
from sparseft.__main__ import main


@pytest.fixture
def files(tmp_path, rng: np.random.Generator):
    from safetensors.numpy import save_file

    pre = {f"h.{i}.weight": rng.standard_normal((4, 3)).astype(np.float32) for i in (0, 2, 10)}
    clean = {k: v + 0.1 for k, v in pre.items()}
    robust = {k: v + rng.standard_normal(v.shape).astype(np.float32) for k, v in pre.items()}
    paths = {}
    for name, d in (("pre", pre), ("clean", clean), ("robust", robust)):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(d, paths[name])
    return tmp_path, paths, (pre, clean, robust)


def test_extract_info_apply(files, capsys) -> None:
    tmp, paths, (pre, clean, robust) = files
    out = tmp / "sig.safetensors"
    args = ["rws", "extract", "--pretrained", str(paths["pre"]), "--clean", str(paths["clean"])]
    assert main([*args, "--robust", str(paths["robust"]), "-o", str(out), "--shallow", "2"]) == 0
    sig = sft.Signature.load(out)
    assert isinstance(sig, sft.Signature) and sig.keys() == ["h.0.weight", "h.2.weight"]  # natural order
    want = sft.Signature.extract(pre, clean, robust, layers=["h.0", "h.2"])
    np.testing.assert_array_equal(sig["h.2.weight"], want["h.2.weight"])
    assert main(["rws", "info", str(out)]) == 0
    assert "h.2.weight  (4, 3)  norm" in capsys.readouterr().out
    patched = tmp / "patched.safetensors"
    assert main(["rws", "apply", str(paths["pre"]), str(out), "-o", str(patched), "--alpha", "0.5"]) == 0
    from safetensors.numpy import load_file

    got = load_file(patched)
    w = {k: v.copy() for k, v in pre.items()}
    sft.Patcher(w).apply(sig, 0.5)
    for k in pre:
        np.testing.assert_array_equal(got[k], w[k])
    q = tmp / "q.safetensors"
    assert (
        main([*args, "--robust", str(paths["robust"]), "-o", str(q), "--bits", "4", "--scheme", "log"]) == 0
    )
    assert isinstance(sft.Signature.load(q), sft.QuantizedSignature)


def test_errors_exit_2_with_one_line(files, capsys) -> None:
    tmp, paths, _ = files
    assert main(["rws", "info", str(paths["pre"])]) == 2
    assert "not a sparseft signature file" in capsys.readouterr().err
    assert main(["rws", "info", str(tmp / "missing.safetensors")]) == 2
    args = ["rws", "extract", "--pretrained", str(paths["pre"]), "--clean", str(paths["clean"])]
    assert main([*args, "--robust", str(paths["robust"]), "-o", str(tmp / "x"), "--layers", "nope"]) == 2
    assert "layers: 'nope'" in capsys.readouterr().err


def test_module_entry_point() -> None:
    r = subprocess.run([sys.executable, "-m", "sparseft", "rws", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "extract" in r.stdout
