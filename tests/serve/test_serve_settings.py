"""`clip-rt serve` settings and pieces that need no running server: the embedding JSON gives back every float32,
the spinning setting reaches the sessions (the model for batches and its twin for lone requests), a missing extra
is one line, and the client and Ray modules import nothing heavy. The HTTP API itself: tests/serve/test_serve.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="serving needs clip-rt[serve]")
pytest.importorskip("uvicorn", reason="serving needs clip-rt[serve]")


def test_embeddings_json_gives_back_every_float32():
    """The embedding routes write 9 significant digits per float32: read back as float32, the same values."""
    import json

    from clip_rt.serve.responses import embeddings_json, embeddings_response

    f32 = np.finfo(np.float32)
    emb = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    emb[0, :7] = [f32.tiny, -f32.max, f32.max, 1e-45, -0.0, 1.0, f32.eps]  # extremes and a denormal
    emb[1] /= np.linalg.norm(emb[1])
    back = np.asarray(json.loads(embeddings_json(emb)), dtype=np.float32)
    assert back.shape == emb.shape and np.array_equal(back, emb)
    doc = json.loads(embeddings_response(emb[:1], files=["é.jpg"], errors=[{"file": "x", "error": "y"}]).body)
    assert list(doc) == ["embeddings", "files", "errors"] and doc["files"] == ["é.jpg"]
    assert np.array_equal(np.asarray(doc["embeddings"], np.float32), emb[:1])
    assert json.loads(embeddings_json(np.zeros((0, 4), np.float32))) == []
    with pytest.raises(ValueError, match="non-finite"):
        embeddings_json(np.array([[0.5, np.nan]], np.float32))


@pytest.mark.parametrize("spinning, lone, allow, stop", [(None, False, "0", "1"), (None, True, "1", "1"),
                                                         (True, False, "1", "0"), (False, False, "0", "1")])
def test_spinning_setting_reaches_the_sessions(tiny_package, spinning, lone, allow, stop):
    """None (the default): the model that runs batches never spins, its twin for lone requests spins inside a call
    and stops when it returns; True: one model spinning between calls too; False: one model, never."""
    from clip_rt.backends.ort_options import SessionTuning, make_session_options
    from clip_rt.serve import ServeConfig

    config = ServeConfig(str(tiny_package), spinning=spinning)
    assert config.lone_twin is (spinning is None)
    opts = make_session_options(SessionTuning(**config.load_options(lone=lone)))
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == allow
    assert opts.get_session_config_entry("session.force_spinning_stop") == stop


@pytest.mark.parametrize("flags, blocked", [([], "uvicorn"), (["--ray"], "ray")])
def test_a_missing_extra_is_one_line(tiny_package, flags, blocked):
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"  # import of it raises ImportError
            f"from clip_rt.cli import main; sys.exit(main(['serve', {str(tiny_package)!r}, *{flags!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("clip-rt serve: error: ") and "pip install 'clip-rt[serve]'" in proc.stderr


def test_client_and_ray_modules_stay_lean():
    code = ("import sys, clip_rt, clip_rt.client, clip_rt.ray, clip_rt.serve, clip_rt.scale, clip_rt.cli.serve\n"
            "heavy = sorted(m for m in ('ray', 'fastapi', 'starlette', 'uvicorn', 'pyarrow', 'pydantic') "
            "if m in sys.modules)\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
