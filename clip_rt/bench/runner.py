"""The benchmark harness behind `clip-rt bench`: latency, throughput, memory and parity in one table.

    doc = run_bench(BenchConfig(package="pkg/", data="data/caltech101"))
    doc == {"machine": {...}, "config": {...}, "methods": {...}, "cells": [...], "rows": [...], "skipped": [...]}

The matrix is backends x precisions x batch sizes x (text lengths) x modes. Every (backend, precision) cell is
opened once; for each measurement (mode, encoder, batch, length) the cells' calls are interleaved round-robin
so that machine noise spreads over all of them, and each row's speedup is against eager PyTorch timed in the
same rounds. Parity runs untimed on a fixed set of inputs; peak memory comes from a fresh process per cell
(clip_rt.bench.memory). A cell that cannot run is skipped with its reason, never dropped silently.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..contract import PRECISIONS
from ..errors import BackendUnavailable, ClipRtError, InputError, PackageError
from ..package import ARTIFACT_FORMATS
from ..tolerances import RUNTIME_MIN_COSINE, tolerance
from . import workloads as wl
from .config import ENCODERS, METHODS, MODES, BenchConfig, bench_backends, check_config
from .timing import Job, Timer, run_interleaved
from .workloads import Key

if TYPE_CHECKING:
    from ..model import ClipModel
    from ..package import Package

__all__ = ["ENCODERS", "MODES", "BenchConfig", "bench_backends", "package_precisions", "run_bench"]


# -- opening the matrix ---------------------------------------------------------------------------------------
def package_precisions(pkg: "Package") -> tuple[str, ...]:
    """Precisions with both an image and a text artifact (ONNX or TensorRT engine), in PRECISIONS order."""
    return tuple(p for p in PRECISIONS if any(pkg.find("image", p, b) and pkg.find("text", p, b)
                                              for b in ARTIFACT_FORMATS))


@dataclass
class Cell:
    backend: str
    precision: str
    model: "ClipModel"
    load_s: float
    device: str
    timed: bool = True  # False: opened only as the parity reference


def open_cell(pkg: "Package", backend: str, precision: str, cfg: BenchConfig, device: str | None = None) -> Cell:
    """clip_rt.load for one cell of the matrix, on cfg.device unless `device` says otherwise."""
    from ..model import load

    device = device or cfg.device
    t0 = time.perf_counter()
    model = load(pkg, backend=backend, precision=precision, device=device, threads=cfg.threads)
    return Cell(backend, precision, model, time.perf_counter() - t0, device)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the run --------------------------------------------------------------------------------------------------
class Run:
    """State of one benchmark run: cells, inputs, measured jobs, parity, skipped entries."""

    def __init__(self, cfg: BenchConfig, log: Callable[[str], None]):
        from ..package import Package

        self.cfg = cfg
        self.log = log
        self.pkg = Package.open(cfg.package)
        check_config(cfg, self.pkg)
        self.precisions = cfg.precisions or package_precisions(self.pkg)
        self.dataset = wl.read_dataset(cfg.data) if cfg.data else None
        self.skipped: list[dict[str, Any]] = []
        self.jobs: dict[Key, Job] = {}
        self.parity: dict[Key, dict[str, Any]] = {}
        self.notes: dict[Key, str] = {}
        self.cells: list[Cell] = []
        self.tutorial: wl.Tutorial | None = None  # the end-to-end reference, once end_to_end() opened it
        self.parity_s = 0.0  # wall seconds spent on parity runs
        for backend in cfg.backends:
            # torch is the eager fp32 reference every speedup is against: asked for, it runs fp32 whatever
            # --precisions says (`--precisions int8 --backends torch,onnxruntime` still has its baseline)
            reference = backend == "torch" and "fp32" not in self.precisions
            for precision in (("fp32", *self.precisions) if reference else self.precisions):
                try:
                    self.cells.append(open_cell(self.pkg, backend, precision, cfg))
                    log(f"opened {backend} {precision} in {self.cells[-1].load_s:.1f} s")
                except (BackendUnavailable, PackageError) as e:
                    self.skip(f"{backend} {precision}", str(e), backend=backend, precision=precision)
        if not any(c.timed for c in self.cells):
            raise BackendUnavailable("no backend/precision of the matrix could be opened (see the lines above)")
        self.reference = self._reference()
        self.tokenizer = self.cells[0].model.tokenizer
        self.inputs = wl.build_inputs(self.pkg, self.tokenizer, self.dataset, cfg.parity_items)
        self.timer = Timer(cfg.device)
        self.ctx = self.pkg.context_length

    def skip(self, label: str, reason: str, **where: Any) -> None:
        """A part of the matrix that cannot run: a line on stderr and an entry in the document's `skipped`."""
        self.log(f"clip-rt bench: skipping {label}: {reason}")
        self.skipped.append({**where, "reason": reason})

    def _reference(self) -> Cell | None:
        """Eager fp32 torch: the timed torch cell, or one opened untimed for parity only (on the run's device,
        or on the CPU when torch cannot run on that device: parity is about numbers, not speed)."""
        for c in self.cells:
            if c.backend == "torch" and c.precision == "fp32":
                return c
        failed = [s for s in self.skipped if s.get("backend") == "torch" and s.get("precision") == "fp32"]
        devices = [] if failed else [self.cfg.device]
        if self.cfg.device != "cpu":
            devices.append("cpu")
        reason = failed[0]["reason"] if failed else ""
        for device in devices:
            try:
                cell = open_cell(self.pkg, "torch", "fp32", self.cfg, device=device)
            except ClipRtError as e:  # BackendUnavailable, PackageError, ModelSourceError, ...
                reason = str(e)
                continue
            cell.timed = False
            self.cells.append(cell)
            self.log(f"opened torch fp32 on {device} as the parity reference (untimed) in {cell.load_s:.1f} s")
            return cell
        self.skip("parity", f"no eager fp32 torch reference can run, so rows carry no parity: {reason}", what="parity")
        return None

    def timed_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.timed]

    def measure(self, label: str, jobs: list[Job]) -> None:
        run_interleaved(jobs, self.timer, self.cfg)
        parts = []
        for job in jobs:
            self.jobs[job.key] = job
            k = job.key
            parts.append(f"{k.backend} {k.precision}{' ' + k.variant if k.variant else ''} "
                         f"{np.median(job.times) * 1e3:.1f} ms x{len(job.times)}")
        self.log(f"{label}: " + ", ".join(parts))

    # -- model mode ---------------------------------------------------------------------------------------------
    def model_mode(self) -> None:
        inputs, cfg = self.inputs, self.cfg
        cells = self.timed_cells()
        if "image" in cfg.encoders:
            self._timed_parity(self._image_parity, cells)
            for b in cfg.batch_sizes:
                jobs = []
                for c in cells:
                    key = Key("model", "image", c.backend, c.precision, b)
                    jobs.append(Job(key, wl.model_call(c.model.backend, key, inputs)))
                    self.notes[key] = "uint8 crops [B, S, S, 3] prepared before timing; no decoding or resizing timed"
                self.measure(f"model image b{b}", jobs)
        if "text" in cfg.encoders:
            for n in cfg.text_lengths:
                self._timed_parity(self._text_parity, cells, n)
                for b in cfg.batch_sizes:
                    jobs = []
                    for c in cells:
                        key = Key("model", "text", c.backend, c.precision, b, n, n)
                        jobs.append(Job(key, wl.model_call(c.model.backend, key, inputs)))
                        self.notes[key] = f"int32 ids of exactly {n} tokens (BOS, {n - 2} tokens, EOT), no padding"
                    torch = [c for c in cells if c.backend == "torch" and c.precision == "fp32"]
                    if torch and n < self.ctx:
                        key = Key("model", "text", "torch", "fp32", b, n, self.ctx, f"padded-{self.ctx}")
                        jobs.append(Job(key, wl.model_call(torch[0].model.backend, key, inputs)))
                        self.notes[key] = (f"the same {n}-token texts EOT-padded to {self.ctx}, as padding='max_length' "
                                           f"gives; parity against eager on the unpadded ids")
                    self.measure(f"model text L{n} b{b}", jobs)

    def _timed_parity(self, fn: Callable[..., None], *args: Any) -> None:
        t0 = time.perf_counter()
        fn(*args)
        self.parity_s += time.perf_counter() - t0

    def _store(self, keys: Sequence[Key], ref_out: np.ndarray, out: np.ndarray,
               ref_top1: np.ndarray | None = None, top1: np.ndarray | None = None) -> None:
        """Cosines of out against ref_out (and top-1 agreement), recorded for every row key given."""
        cos = wl.cosines(ref_out, out)  # [P]
        entry: dict[str, Any] = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                                 "top1_agreement": None, "parity_items": int(len(cos))}
        if ref_top1 is not None and top1 is not None:
            entry["top1_agreement"] = float(np.mean(top1 == ref_top1))
        for key in keys:
            self.parity[key] = entry

    def _image_parity(self, cells: Sequence[Cell]) -> None:
        """Each cell's image embeddings of the parity crops against eager's; zero-shot labels when classes exist."""
        ref = self.reference
        if ref is None:
            return
        crops, class_ids = self.inputs.crops, self.inputs.class_ids

        def run(c: Cell) -> tuple[np.ndarray, np.ndarray | None]:
            emb = wl.chunked(c.model.backend.encode_images, crops)  # [P, D]
            if class_ids is None:
                return emb, None
            cls = wl.chunked(c.model.backend.encode_texts, class_ids)  # [C, D]
            return emb, (emb @ cls.T).argmax(axis=1)  # [P] zero-shot labels

        ref_emb, ref_top1 = run(ref)
        for c in cells:
            emb, top1 = (ref_emb, ref_top1) if c is ref else run(c)
            keys = [Key("model", "image", c.backend, c.precision, b) for b in self.cfg.batch_sizes]
            self._store(keys, ref_emb, emb, ref_top1, top1)

    def _text_parity(self, cells: Sequence[Cell], n: int) -> None:
        """Each cell's embeddings of P texts of exactly n tokens against eager's; the padded row against eager
        on the unpadded ids."""
        ref = self.reference
        if ref is None:
            return
        ids = wl.text_batch(self.inputs, len(self.inputs.crops), n)  # [P, n] int32
        ref_out = wl.chunked(ref.model.backend.encode_texts, ids)  # [P, D]
        for c in cells:
            out = ref_out if c is ref else wl.chunked(c.model.backend.encode_texts, ids)
            self._store([Key("model", "text", c.backend, c.precision, b, n, n) for b in self.cfg.batch_sizes],
                        ref_out, out)
        if ref.timed and n < self.ctx:
            padded = wl.chunked(ref.model.backend.encode_texts, wl.pad_to(ids, self.ctx))  # [P, D]
            self._store([Key("model", "text", "torch", "fp32", b, n, self.ctx, f"padded-{self.ctx}")
                         for b in self.cfg.batch_sizes], ref_out, padded)

    # -- end-to-end mode -------------------------------------------------------------------------------------------
    def end_to_end(self) -> None:
        ds = self.dataset
        if ds is None or not ds.classes:
            why = "no --data given" if ds is None else f"{ds.root} has no classes.txt"
            self.skip("end-to-end mode", f"{why}; end-to-end mode classifies the image files of a --data folder "
                                         f"against the names in its classes.txt", mode="end-to-end")
            return
        targets: list[tuple[Key, Any]] = []  # (row key at batch 0, Tutorial or ZeroShotClassifier)
        tutorial = None
        if self.reference is not None:
            try:
                tutorial = wl.Tutorial(self.pkg, ds.classes, self.reference.device)
            except (BackendUnavailable, ClipRtError) as e:
                self.skip("end-to-end torch reference", str(e), backend="torch", precision="fp32", mode="end-to-end")
        for c in self.timed_cells():
            if c.backend == "torch":
                if tutorial is not None:  # timed only with a timed torch cell, hence on the run's device
                    for v in ("tutorial", "tutorial-cached-text"):
                        targets.append((Key("end-to-end", "zeroshot", "torch", "fp32", 0, variant=v), tutorial))
                continue
            targets.append((Key("end-to-end", "zeroshot", c.backend, c.precision, 0), wl.classifier(c.model, ds.classes)))
        self.tutorial = tutorial
        self._timed_parity(self._e2e_parity, targets, tutorial)
        attn = f"; {tutorial.loaded_with}, attn_implementation={tutorial.attn}" if tutorial else ""
        note = {"tutorial": f"PIL open + CLIPProcessor(text={len(ds.classes)} prompts, images, padding=True) + "
                            f"CLIPModel(**inputs).logits_per_image.softmax(-1): prompts re-encoded every call{attn}",
                "tutorial-cached-text": f"as 'tutorial' but the {len(ds.classes)} prompt embeddings computed once "
                                        f"before timing (processor(images) + get_image_features per call){attn}",
                None: f"ZeroShotClassifier.predict(files): decode + resize/crop on a thread pool + image encoder + "
                      f"softmax; the {len(ds.classes)} class embeddings computed once before timing (amortized, "
                      f"as its cache does), not timed"}
        for b in self.cfg.batch_sizes:
            jobs = []
            for base, target in targets:
                key = Key(base.mode, base.encoder, base.backend, base.precision, b, variant=base.variant)
                jobs.append(Job(key, wl.e2e_call(target, key, self.inputs.files)))
                self.notes[key] = note[base.variant]
                if base in self.parity:
                    self.parity[key] = self.parity[base]
            self.measure(f"end-to-end b{b}", jobs)

    def _e2e_parity(self, targets: list[tuple[Key, Any]], tutorial: Any) -> None:
        """Image embeddings and top-1 labels of the first parity files against the tutorial's."""
        if tutorial is None:
            return
        files = self.inputs.files[: self.cfg.parity_items]
        ref_emb, ref_top1 = wl.e2e_outputs(tutorial, "tutorial", files)
        for base, target in targets:
            emb, top1 = (ref_emb, ref_top1) if base.variant == "tutorial" else wl.e2e_outputs(target, base.variant, files)
            self._store([base], ref_emb, emb, ref_top1, top1)

    # -- rows -------------------------------------------------------------------------------------------------------
    def references(self, key: Key) -> dict[str, Key]:
        """Name -> key of each eager row this row's speedups are against (the first one is `speedup`)."""
        if key.mode == "end-to-end":
            return {f"torch-{v}": Key(key.mode, key.encoder, "torch", "fp32", key.batch, variant=v)
                    for v in ("tutorial", "tutorial-cached-text")}
        refs = {"torch": Key(key.mode, key.encoder, "torch", "fp32", key.batch, key.text_length, key.text_length)}
        if key.encoder == "text" and key.text_length is not None and key.text_length < self.ctx:
            refs[f"torch-padded-{self.ctx}"] = Key(key.mode, key.encoder, "torch", "fp32", key.batch, key.text_length,
                                                   self.ctx, f"padded-{self.ctx}")
        return refs

    def row(self, key: Key, memory: dict[Key, dict[str, float | None]]) -> dict[str, Any]:
        from .report import latency_stats

        job = self.jobs[key]
        stats = latency_stats(job.times)
        median = stats["latency_ms_median"]
        speedups = {name: float(np.median(self.jobs[k].times)) * 1e3 / median
                    for name, k in self.references(key).items() if k in self.jobs}
        primary = next(iter(self.references(key)))
        is_ref = self.references(key)[primary] == key
        parity = self.parity.get(key, {})
        ok = None
        if parity and not is_ref:
            tol = tolerance(key.backend, key.precision)
            floor = min(tol.min_cosine, RUNTIME_MIN_COSINE) if key.mode == "end-to-end" else tol.min_cosine
            mean_floor = min(tol.mean_cosine, RUNTIME_MIN_COSINE) if key.mode == "end-to-end" else tol.mean_cosine
            ok = bool(parity["min_cosine"] >= floor and parity["mean_cosine"] >= mean_floor
                      and (parity["top1_agreement"] is None or parity["top1_agreement"] >= tol.top1_agreement))
        mem = memory.get(key, {})
        return {"backend": key.backend, "precision": key.precision, "device": self.cfg.device, "mode": key.mode,
                "encoder": key.encoder, "variant": key.variant, "batch": key.batch, "text_length": key.text_length,
                "input_length": key.input_length, "iters": len(job.times), "warmup": self.cfg.warmup,
                "timer": self.timer.name, **stats, "throughput": key.batch / (median / 1e3),
                "speedup": speedups.get(primary), "speedups": speedups, "reference": is_ref,
                "peak_rss_mb": mem.get("peak_rss_mb"), "peak_gpu_mb": mem.get("peak_gpu_mb"),
                "min_cosine": parity.get("min_cosine"), "mean_cosine": parity.get("mean_cosine"),
                "top1_agreement": parity.get("top1_agreement"), "parity_items": parity.get("parity_items"),
                "parity_ok": ok, "notes": self.notes.get(key, "")}


def _cpu_seconds() -> float | None:
    try:
        import resource
    except ImportError:  # not Unix
        return None
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run the matrix; returns {"machine", "config", "methods", "cells", "rows", "skipped", "phases", ...}
    (row keys: clip_rt.bench.report.ROW_SCHEMA). Progress and skipped cells go to `log` (stderr)."""
    from .. import __version__
    from .memory import probe_all
    from .report import check_document, machine_info

    t0 = time.perf_counter()
    phases: dict[str, float | None] = {}  # wall seconds per phase, for planning runs (parity_s is inside model/e2e)

    def phase(name: str, start: float) -> float:
        now = time.perf_counter()
        phases[name] = round(now - start, 1)
        return now

    run = Run(cfg, log)
    t = phase("open_s", t0)
    if "model" in cfg.modes:
        run.model_mode()
        t = phase("model_s", t)
    if "end-to-end" in cfg.modes:
        run.end_to_end()
        t = phase("end_to_end_s", t)
    if not run.jobs:
        raise InputError("nothing was measured: every part of the matrix was skipped (reasons above)")
    memory: dict[Key, dict[str, float | None]] = {}
    if cfg.memory:
        memory = probe_all(cfg, list(run.jobs), run.skipped, log)
        t = phase("memory_s", t)
    phases["parity_s"] = round(run.parity_s, 1)
    cpu = _cpu_seconds()
    phases["cpu_s"] = None if cpu is None else round(cpu, 1)  # user + system, this process and its memory probes
    rows = [run.row(k, memory) for k in run.jobs]
    cells = [{"backend": c.backend, "precision": c.precision, "device": c.device, "timed": c.timed,
              "load_s": round(c.load_s, 3), "describe": c.model.backend.describe()} for c in run.cells]
    if run.tutorial is not None:
        cells.append({"backend": "torch", "precision": "fp32", "device": str(run.tutorial.device),
                      "timed": any(c.timed and c.backend == "torch" for c in run.cells),
                      "load_s": None, "describe": {"end_to_end_reference": run.tutorial.loaded_with,
                                                    "attn_implementation": run.tutorial.attn}})
    config = {**asdict(cfg), "precisions": list(run.precisions), "iters": cfg.iters or "auto",
              "package_fingerprint": run.pkg.fingerprint, "model": run.pkg.model,
              "inputs": {"crops": run.inputs.crops_source, "files": len(run.inputs.files)}}
    doc = {"clip_rt": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
           "config": config, "methods": METHODS, "cells": cells, "rows": rows, "skipped": run.skipped,
           "elapsed_s": round(time.perf_counter() - t0, 1), "phases": phases}
    problems = check_document(doc)
    if problems:  # a harness bug, not a user error: say exactly what is wrong
        raise RuntimeError("benchmark produced a malformed document: " + "; ".join(problems[:10]))
    for c in run.cells:
        c.model.close()
    return doc
