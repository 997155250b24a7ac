"""The model package: a folder with manifest.json, tokenizer files and one artifact per encoder and precision.

Weights and preprocessing are one thing: the manifest carries the image size, resize/crop/interpolation,
mean/std, the context length and the logit scale next to the artifacts, each with its sha256 and the
parity numbers measured when it was written. Reading a package needs only the standard library.

Format version 2 adds what differs between model families (export/families/): model.family, model.scoring (softmax,
or sigmoid with a bias), the tokenizer block's padding rule ("longest" or "max_length") and token ids (a missing
start token is null), and the preprocess block's resize mode and crop rounding. A version 1 package (written before
families) is a CLIP: read with those fields at CLIP's values.

    manifest.json
    tokenizer.json (+ vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json)
    image.onnx, text.onnx                       fp32
    image.int8.onnx, text.fp16.onnx, ...        other precisions
    engines/image.fp16.<key>.engine             TensorRT, keyed by what invalidates them
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .contract import BOS_ID, ENCODERS, EOT_ID, EncoderContract, TextTokens, check_precision, image_contract, \
    text_contract
from .errors import PackageError
from .fsutil import atomic_write_json, sha256_file

if TYPE_CHECKING:
    from .scoring import Scoring

FORMAT = "clip-rt-package"
FORMAT_VERSION = 2  # 2: model families (scoring, padding, resize mode); version 1 packages are read as CLIP
PADDINGS = ("longest", "max_length")  # pad each batch to its longest text | every text to the context length
MANIFEST = "manifest.json"
# What an artifact's "backend" field may say: the format it is in, "onnxruntime" (an ONNX file, also what TensorRT
# builds from and OpenVINO reads) or "tensorrt" (a serialized engine). Not the runtime backends: clip_rt.backends.
ARTIFACT_FORMATS = ("onnxruntime", "tensorrt")


@dataclass(frozen=True)
class Artifact:
    """One file of the package: an encoder at a precision, for a backend."""

    file: str  # relative to the package root
    encoder: str  # "image" | "text"
    precision: str  # "fp32" | "fp16" | "int8"
    backend: str  # "onnxruntime" (ONNX, also fed to TensorRT) | "tensorrt" (serialized engine)
    sha256: str
    opset: int | None = None
    parity: dict[str, Any] = field(default_factory=dict)  # measured against eager fp32 at write time
    forced: bool = False  # written despite failing its tolerance (--force)
    extra: dict[str, Any] = field(default_factory=dict)  # fusions, quantization recipe, engine metadata

    @property
    def optimized(self) -> bool:
        """True for a graph fused with ONNX Runtime contrib ops (com.microsoft): ONNX Runtime only, not TensorRT."""
        return bool(self.extra.get("graph", {}).get("optimized", False))

    def to_json(self) -> dict[str, Any]:
        d = {"file": self.file, "encoder": self.encoder, "precision": self.precision, "backend": self.backend,
             "opset": self.opset, "sha256": self.sha256, "parity": self.parity, "forced": self.forced}
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Artifact":
        known = {"file", "encoder", "precision", "backend", "opset", "sha256", "parity", "forced"}
        return cls(file=d["file"], encoder=d["encoder"], precision=d["precision"], backend=d["backend"],
                   sha256=d["sha256"], opset=d.get("opset"), parity=d.get("parity", {}),
                   forced=bool(d.get("forced", False)), extra={k: v for k, v in d.items() if k not in known})


class Package:
    """A model package opened for reading. Cheap to open; an artifact's sha256 is checked when it is used."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self.artifacts = [Artifact.from_json(a) for a in manifest.get("artifacts", [])]
        self._verified: set[str] = set()
        self._tokenizer_digests: list[str] | None = None  # sha256 of each tokenizer file, read on first need

    # -- opening ---------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> "Package":
        root = Path(path)
        if root.is_file() and root.name == MANIFEST:
            root = root.parent
        if not root.exists():
            raise PackageError(f"model package {root} does not exist; create one with: clip-rt export MODEL -o {root}")
        if not root.is_dir():
            raise PackageError(f"{root} is not a model package folder (expected a folder with {MANIFEST})")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise PackageError(f"{root} has no {MANIFEST}: not a clip-rt package (create one with: clip-rt export MODEL -o {root})")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PackageError(f"{manifest_path} is unreadable or not valid JSON ({e}); re-export the package") from None
        if manifest.get("format") != FORMAT:
            raise PackageError(f"{manifest_path} is not a clip-rt manifest (format={manifest.get('format')!r})")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise PackageError(f"{root} has manifest format version {version}, newer than this clip-rt reads "
                               f"({FORMAT_VERSION}); upgrade clip-rt (pip install -U clip-rt) or re-export the package")
        pkg = cls(root, manifest)
        for rel in pkg.tokenizer_files:
            if not (root / rel).is_file():
                raise PackageError(f"{root}: tokenizer file {rel} listed in the manifest is missing; re-export the package")
        for a in pkg.artifacts:
            if not (root / a.file).is_file():
                raise PackageError(f"{root}: artifact {a.file} ({a.encoder} {a.precision} {a.backend}) listed in the "
                                   f"manifest is missing; re-export the package or restore the file")
        return pkg

    # -- model facts ---------------------------------------------------------------------------------
    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.manifest["preprocess"]

    @property
    def source(self) -> dict[str, Any]:
        return self.manifest["source"]

    @property
    def embed_dim(self) -> int:
        return int(self.model["embed_dim"])

    @property
    def image_size(self) -> int:
        return int(self.model["image_size"])

    @property
    def context_length(self) -> int:
        return int(self.model["context_length"])

    @property
    def logit_scale(self) -> float:
        return float(self.model["logit_scale"])

    @property
    def family(self) -> str:
        """The model family the package was exported from ("clip", "siglip", "chinese_clip", "open_clip")."""
        return str(self.model.get("family", "clip"))

    @property
    def scoring(self) -> "Scoring":
        """How cosines become label scores (softmax over labels, or sigmoid per label with a bias)."""
        from .scoring import Scoring

        return Scoring.from_manifest(self.model)

    @property
    def padding(self) -> str:
        """The text padding rule: "longest" (pad each batch to its longest text) or "max_length" (every text to the
        context length: the text encoder pools a fixed position)."""
        padding = str(self.manifest["tokenizer"].get("padding", "longest"))
        if padding not in PADDINGS:
            raise PackageError(f"{self.root}: unknown text padding rule {padding!r}; this clip-rt knows "
                               f"{', '.join(PADDINGS)} (upgrade clip-rt or re-export the package)")
        return padding

    @property
    def padding_side(self) -> str:
        """Where the padding goes: "right" (after the text; every package before SigLIP 2) or "left"."""
        side = str(self.manifest["tokenizer"].get("padding_side", "right"))
        if side not in ("right", "left"):
            raise PackageError(f"{self.root}: unknown text padding side {side!r}; re-export the package")
        return side

    @property
    def text_tokens(self) -> TextTokens:
        """The text encoder's token ids (start, end, padding, ordinary range) and whether its length is fixed."""
        t = self.manifest["tokenizer"]
        eos = t.get("eos_id", EOT_ID)
        lo, hi = t.get("ordinary_ids", (1, BOS_ID))
        return TextTokens(bos_id=t.get("bos_id", BOS_ID), eos_id=eos, pad_id=int(t.get("pad_id", eos)),
                          ordinary=(int(lo), int(hi)), fixed_length=self.padding == "max_length")

    @property
    def tokenizer_files(self) -> list[str]:
        return list(self.manifest["tokenizer"]["files"])

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest["tokenizer"]["file"]

    def contract(self, encoder: str) -> EncoderContract:
        if encoder == "image":
            return image_contract(self.image_size, self.embed_dim)
        if encoder == "text":
            return text_contract(self.context_length, self.embed_dim, tokens=self.text_tokens)
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {ENCODERS}")

    # -- artifacts -----------------------------------------------------------------------------------
    def find(self, encoder: str, precision: str, backend: str = "onnxruntime", portable: bool = False) -> list[Artifact]:
        return [a for a in self.artifacts if a.encoder == encoder and a.precision == precision and a.backend == backend
                and not (portable and a.optimized)]

    def artifact(self, encoder: str, precision: str, backend: str = "onnxruntime", portable: bool = False) -> Artifact:
        """The one artifact for (encoder, precision, backend), or a PackageError listing what exists.

        portable=True skips graphs fused with ONNX Runtime's contrib ops (extra graph.optimized): what TensorRT's
        parser and other non-ONNX-Runtime consumers need. Without it the last match wins (the fused graph, for ORT).
        """
        check_precision(precision)
        found = self.find(encoder, precision, backend, portable)
        if not found:
            have = sorted({f"{a.backend}/{a.precision}" for a in self.artifacts if a.encoder == encoder})
            hint = (f"clip-rt build-engine {self.root} --precision {precision}" if backend == "tensorrt"
                    else self.export_command(precision))
            raise PackageError(f"{self.root} has no {precision} {encoder} artifact for {backend} "
                               f"(it has: {', '.join(have) or 'none'}); create it with: {hint}")
        return found[-1]

    def path(self, artifact: Artifact, verify: bool = True) -> Path:
        """The artifact's file, its sha256 checked against the manifest (once per Package)."""
        p = self.root / artifact.file
        if verify and artifact.file not in self._verified:
            if not p.is_file():
                raise PackageError(f"{p} is missing; re-export the package")
            digest = sha256_file(p)
            if digest != artifact.sha256:
                raise PackageError(f"{p} does not match its sha256 in the manifest (file {digest[:12]}..., manifest "
                                   f"{artifact.sha256[:12]}...): the file was modified or corrupted; re-export the package")
            self._verified.add(artifact.file)
        return p

    def export_command(self, *precisions: str) -> str:
        """The `clip-rt export` command that writes this package again with its precisions plus `precisions`, from
        the source its manifest records (hub id and revision, or local folder; random-init seed)."""
        source = self.manifest.get("source") or {}
        have = [p for p in ("fp32", "fp16", "int8") if any(a.precision == p for a in self.artifacts)]
        wanted = list(dict.fromkeys([*have, *precisions]))
        parts = ["clip-rt export", shlex.quote(str(source.get("model") or "SOURCE")), "-o", shlex.quote(str(self.root)),
                 "--precision", *wanted]
        if source.get("revision"):
            parts += ["--revision", shlex.quote(str(source["revision"]))]
        if source.get("random_init"):
            parts += ["--random-init", "--seed", str(source.get("seed") or 0)]
        return " ".join(parts)

    def embedding_key(self, encoder: str, precision: str, backend: str = "onnxruntime") -> str:
        """A short id of what turns inputs into `encoder`'s embeddings at `precision` on `backend`, for the keys of
        indexes and embedding caches (16 hex digits).

        It covers: the sha256 of the ONNX artifacts of (encoder, precision), which ONNX Runtime and OpenVINO run and
        TensorRT engines are built from (the torch backend runs the source weights: their fingerprint instead); the
        backend; the model block; and the encoder's input rules: the preprocessing block for "image", the tokenizer
        settings and files' content for "text". Artifacts of other precisions or encoders and TensorRT engines are not
        in it, so adding them to a package keeps every key. Raises PackageError (with the command that creates it)
        when the package has no such artifact."""
        from .fsutil import sha256_bytes

        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; choose one of {ENCODERS}")
        if backend == "torch":
            produced: Any = {"weights_sha256": self.source.get("weights_sha256")}
        else:
            self.artifact(encoder, precision)  # PackageError naming the export command when there is none
            produced = sorted(a.sha256 for a in self.find(encoder, precision, "onnxruntime"))
        inputs = self.preprocess if encoder == "image" else {**self.manifest["tokenizer"],
                                                             "sha256": self._tokenizer_sha256()}
        blob = json.dumps({"encoder": encoder, "precision": precision, "backend": backend, "produced": produced,
                           "model": self.model, "inputs": inputs}, sort_keys=True)
        return sha256_bytes(blob.encode())[:16]

    def _tokenizer_sha256(self) -> list[str]:
        if self._tokenizer_digests is None:
            self._tokenizer_digests = [sha256_file(self.root / rel) for rel in self.tokenizer_files]
        return self._tokenizer_digests

    @property
    def fingerprint(self) -> str:
        """A short id of the whole package's content (every artifact's hash + preprocessing + tokenizer). Adding an
        artifact changes it: key embeddings by embedding_key() instead."""
        from .fsutil import sha256_bytes

        blob = json.dumps({"artifacts": sorted(a.sha256 for a in self.artifacts), "model": self.model,
                           "preprocess": self.preprocess, "tokenizer": self.manifest["tokenizer"]}, sort_keys=True)
        return sha256_bytes(blob.encode())[:16]


# -- writing (used by the exporter and the engine builder) ---------------------------------------------
def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(root: str | os.PathLike, manifest: dict[str, Any]) -> None:
    manifest = {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION}
    atomic_write_json(Path(root) / MANIFEST, manifest)


def add_artifact(root: str | os.PathLike, artifact: Artifact) -> None:
    """Add (or replace: same encoder, precision, backend and file) an artifact entry in a package's manifest."""
    check_precision(artifact.precision)
    if artifact.backend not in ARTIFACT_FORMATS:
        raise ValueError(f"unknown artifact backend {artifact.backend!r}")
    manifest = read_manifest(root)
    kept = [a for a in manifest.get("artifacts", [])
            if not (a["encoder"] == artifact.encoder and a["precision"] == artifact.precision
                    and a["backend"] == artifact.backend and a["file"] == artifact.file)]
    manifest["artifacts"] = kept + [artifact.to_json()]
    write_manifest(root, manifest)
