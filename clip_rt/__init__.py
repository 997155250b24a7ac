"""clip-rt: a lean, fast CLIP inference runtime.

    import clip_rt
    model = clip_rt.load("pkg/")                     # ONNX Runtime on CPU, fp32
    clf = clip_rt.ZeroShotClassifier(model, ["cat", "dog"])
    clf.predict(["photo.jpg"], top_k=1)

`import clip_rt` loads only numpy-light modules; the public names below are resolved on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load": "clip_rt.model",
    "ClipModel": "clip_rt.model",
    "ZeroShotClassifier": "clip_rt.zeroshot",
    "Index": "clip_rt.search",
    "ImageIndex": "clip_rt.search",  # clip-rt 0.1's name for Index
    "Tokenizer": "clip_rt.tokenizer",
    "Package": "clip_rt.package",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from .search import ImageIndex, Index
    from .model import ClipModel, load
    from .package import Package
    from .tokenizer import Tokenizer
    from .zeroshot import ZeroShotClassifier


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    """The public names (resolved lazily, so absent from globals() until first use) and the module's dunders."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})
