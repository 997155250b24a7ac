"""Shared fixtures: the ../shared folder, tiny and ViT-B/32 HF source folders with random weights, and their
exported packages (built once per test session; ViT-B/32 ones only when a test asks for them)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLIP_RT_SHARED", ROOT.parent / "shared"))
TOKENIZER_DIR = SHARED / "models" / "clip-tokenizer"
DATA_DIR = SHARED / "data"

# A tiny CLIP with the real vocabulary and context length, so the real tokenizer files work with it.
# image 64 / patch 16 keeps the patch-conv folding and the pooling paths realistic at ~1 s per export.
TINY_CONFIG = {
    "architectures": ["CLIPModel"],
    "model_type": "clip",
    "projection_dim": 32,
    "logit_scale_init_value": 2.6592,
    "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
                    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
                    "bos_token_id": 0, "eos_token_id": 2, "projection_dim": 32},
    "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
                      "image_size": 64, "patch_size": 16, "hidden_act": "quick_gelu", "projection_dim": 32},
}
TINY_PREPROCESSOR = {"crop_size": {"height": 64, "width": 64}, "do_center_crop": True, "do_convert_rgb": True,
                     "do_normalize": True, "do_rescale": True, "do_resize": True,
                     "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                     "image_processor_type": "CLIPImageProcessor", "resample": 3,
                     "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 64}}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


# The default tier holds about 2 GB of exported models at once (tmp_path_retention_policy deletes each passing test's
# folder); short of this, tests fail on writes with errors that do not say why, so the header says it first.
DISK_NEEDED_GIB = 4.0


def pytest_report_header(config: pytest.Config) -> list[str]:
    from clip_rt import cputier

    tier = cputier.detect()
    tmp = Path(tempfile.gettempdir())
    free = shutil.disk_usage(tmp).free / 2**30
    lines = [f"clip-rt: CPU tier {tier.describe()}; {free:.1f} GiB free in {tmp}"]
    if free < DISK_NEEDED_GIB:
        lines.append(f"clip-rt: WARNING: under {DISK_NEEDED_GIB:.0f} GiB free in {tmp}; the suite writes up to about "
                     "that much there, expect write errors (set TMPDIR to a larger disk)")
    return lines


def need_shared() -> Path:
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): the real CLIP tokenizer files and photos live there")
    return SHARED


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return need_shared()


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"{DATA_DIR} is absent")
    return DATA_DIR


def make_source(folder: Path, config: dict, preprocessor: dict, seed: int = 0) -> Path:
    """A local HF folder: config, tokenizer files and random weights saved with save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    need_shared()
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, folder / name)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    torch.manual_seed(seed)
    # Non-zero logit-scale and slightly wider init than the default keep random embeddings well spread.
    CLIPModel(CLIPConfig(**config)).save_pretrained(folder)
    return folder


def export(source: Path, out: Path, *args: str) -> Path:
    from clip_rt.cli import main

    rc = main(["export", str(source), "-o", str(out), *args])
    assert rc == 0, f"export of {source} failed with exit code {rc}"
    return out


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source(tmp_path_factory.mktemp("tiny") / "hf", TINY_CONFIG, TINY_PREPROCESSOR)


@pytest.fixture(scope="session")
def tiny_package(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    eval_images = DATA_DIR / "caltech101" / "images"
    args = ["--eval-images", str(eval_images)] if eval_images.is_dir() else []
    # fp16 too: TensorRT 10.12+ and 11 build fp16 engines from the fp16 ONNX (strong typing); about a second more.
    return export(tiny_source, tmp_path_factory.mktemp("tiny-pkg") / "pkg", "--precision", "fp32", "fp16", *args)


@pytest.fixture(scope="session")
def vitb32_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_shared()
    config = json.loads((TOKENIZER_DIR / "config.json").read_text())
    preprocessor = json.loads((TOKENIZER_DIR / "preprocessor_config.json").read_text())
    return make_source(tmp_path_factory.mktemp("vitb32") / "hf", config, preprocessor)


@pytest.fixture(scope="session")
def vitb32_package(vitb32_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    eval_images = DATA_DIR / "imagenet_sample" / "images"
    args = ["--eval-images", str(eval_images)] if eval_images.is_dir() else []
    return export(vitb32_source, tmp_path_factory.mktemp("vitb32-pkg") / "pkg", *args)


def int8_data_args(data_dir: Path) -> list[str]:
    """INT8 export arguments for the tiny model: calibration on flickr8k, gate on caltech101, zero-shot on cifar10."""
    return ["--calib", str(data_dir / "flickr8k"), "--eval-images", str(data_dir / "caltech101" / "images"),
            "--eval", str(data_dir / "cifar10")]


@pytest.fixture(scope="session")
def tiny_q_package(tiny_source: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with the default INT8 recipe (and fp16), as test_quantize and test_int8_tiers read it."""
    out = tmp_path_factory.mktemp("tiny-q") / "pkg"
    return export(tiny_source, out, "--precision", "int8", "fp16", *int8_data_args(data_dir))


# -- runtime fixtures shared by the runtime test files ------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tiny_package: Path):
    """The tiny package loaded with the default backend (ONNX Runtime, fp32, CPU), once per test module."""
    import clip_rt

    return clip_rt.load(tiny_package)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh disk cache ($CLIP_RT_CACHE) and an empty memory cache for each test."""
    from clip_rt import zeroshot

    folder = tmp_path / "cache"
    monkeypatch.setenv("CLIP_RT_CACHE", str(folder))
    zeroshot.clear_memory_cache()
    yield folder
    zeroshot.clear_memory_cache()


# -- Ray (tests/serve/test_serve.py, tests/serve/test_scale.py) ----------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name: [state, ppid, ..., starttime at index 19]; None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid`, as {pid: start time} (the start time tells a reused pid apart)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            found[child] = started
            todo.append(child)
    return found


def end_processes(procs: dict[int, str], grace_s: float = 30.0) -> None:
    """Wait up to grace_s for these processes (started by this test run) to exit, then SIGKILL the ones left."""
    import signal
    import time

    def running(pid: int, started: str) -> bool:  # False once exited, a zombie, or the pid is someone else's
        fields = _stat(pid)
        return fields is not None and fields[0] != "Z" and fields[19] == started

    deadline = time.monotonic() + grace_s
    alive = {p: t for p, t in procs.items() if running(p, t)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = {p: t for p, t in alive.items() if running(p, t)}
    for p in alive:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for the whole session (2 CPUs, no dashboard, a 256 MiB object store), shut down at
    the end with every process it started gone. Ray starts slowly (10-60 s here): tests share this one."""
    ray = pytest.importorskip("ray", reason="Ray tests need clip-rt[serve,scale]")
    for attempt in (1, 2):  # Ray gives its raylet 30 s to register, which an overloaded shared host can miss once
        try:
            from clip_rt.ray import connect

            connect(num_cpus=2, object_store_bytes=256 << 20)  # as clip-rt starts a local cluster, smaller
            break
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this timeout
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
            end_processes(descendants(os.getpid()))
    yield ray
    started = descendants(os.getpid())
    ray.shutdown()
    end_processes(started)
