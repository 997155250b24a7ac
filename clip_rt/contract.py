"""Each encoder's I/O contract, declared once.

The exporter (input/output names, dynamic axes, sample inputs), the TensorRT builder (optimization
profiles), the runtime backends (buffers, dtypes) and the tests all read these declarations. Nothing
here imports anything heavier than numpy.

    image encoder: pixels     uint8 [B, S, S, 3] RGB, resized + cropped (as the manifest's preprocess says)
                                                                                -> image_embeds float32 [B, D]
    text encoder:  input_ids  int32 [B, L], L <= context length, EOS-terminated  -> text_embeds  float32 [B, D]
                   (L == context length for families that pool a fixed position: TextTokens.fixed_length)

Both outputs are L2-normalized. Token ids (start, end, padding, the ordinary range) are the family's (TextTokens);
the defaults are CLIP's BPE vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import check_choice

# Precision is one value, everywhere (CLI choices, manifest, artifact selection).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
ENCODERS: tuple[str, ...] = ("image", "text")


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else clip_rt.errors.InputError (a ValueError) naming them."""
    check_choice(precision, "precision", PRECISIONS)
    return precision


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "uint8", "int32", "float32"
    shape: tuple[int | str, ...]  # ints are fixed, strings name a dynamic axis

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


# CLIP's BPE vocabulary (all OpenAI/OpenCLIP/HF CLIP checkpoints): start- and end-of-text ids.
BOS_ID = 49406
EOT_ID = 49407


@dataclass(frozen=True)
class TextTokens:
    """The text encoder's token ids, as a family's tokenizer produces them (the manifest's tokenizer block)."""

    bos_id: int | None = BOS_ID  # first token of every text; None: the tokenizer adds none (SigLIP)
    eos_id: int | None = EOT_ID  # last token of every text; None: the tokenizer adds none
    pad_id: int = EOT_ID  # what fills a row after its text
    ordinary: tuple[int, int] = (1, BOS_ID)  # [lo, hi): ids of ordinary tokens, for sample inputs
    fixed_length: bool = False  # True: texts are padded to exactly the context length (the encoder pools a fixed
    #                             position, SigLIP's last one), so the sequence axis is not dynamic


@dataclass(frozen=True)
class EncoderContract:
    """What goes into and comes out of one encoder, plus the shape range engines are built for."""

    encoder: str  # "image" | "text"
    input: TensorSpec
    output: TensorSpec
    # Values of each dynamic axis: (min, opt, max). Engines get one optimization profile from these;
    # the exporter traces at `sample` values, which the tests deliberately avoid.
    axis_ranges: dict[str, tuple[int, int, int]]
    sample: dict[str, int]
    tokens: TextTokens | None = None  # text encoders: the token ids of sample inputs (None: CLIP's)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's dynamic_axes for this encoder."""
        return {self.input.name: self.input.dynamic_axes, self.output.name: self.output.dynamic_axes}

    def shape_for(self, **axes: int) -> tuple[int, ...]:
        return tuple(axes[d] if isinstance(d, str) else d for d in self.input.shape)

    def profile(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes for a TensorRT optimization profile."""
        lo = {k: v[0] for k, v in self.axis_ranges.items()}
        opt = {k: v[1] for k, v in self.axis_ranges.items()}
        hi = {k: v[2] for k, v in self.axis_ranges.items()}
        return self.shape_for(**lo), self.shape_for(**opt), self.shape_for(**hi)

    def sample_input(self, seed: int = 0, **axes: int) -> np.ndarray:
        """A valid random input at the given (default: sample) axis values."""
        dims = {**self.sample, **axes}
        shape = self.shape_for(**dims)
        rng = np.random.default_rng(seed)
        if self.encoder == "image":
            return rng.integers(0, 256, size=shape, dtype=np.uint8)
        # Text: BOS, random ordinary tokens, EOS, then padding after a random length.
        tok = self.tokens or TextTokens()
        batch, length = shape
        ids = np.full(shape, tok.pad_id, dtype=np.int32)
        head = 0 if tok.bos_id is None else 1
        tail = 0 if tok.eos_id is None else 1
        for row in range(batch):
            n = int(rng.integers(min(length, max(head + tail, 1)), length + 1))  # tokens including BOS and EOS
            if tok.bos_id is not None:
                ids[row, 0] = tok.bos_id
            ids[row, head: n - tail] = rng.integers(*tok.ordinary, size=n - tail - head)
            if tok.eos_id is not None:
                ids[row, n - 1] = tok.eos_id
        return ids

    def warmup_inputs(self) -> list[np.ndarray]:
        """What a backend runs at load to warm up: batch 1 and the profile's opt batch (texts at the opt length), so
        that kernel selection, arena growth and pre-packing happen at load, not on the first user call."""
        _, opt, _ = self.axis_ranges["batch"]
        extra = {"sequence": self.axis_ranges["sequence"][1]} if "sequence" in self.axis_ranges else {}
        return [self.sample_input(seed=0, batch=batch, **extra) for batch in (1, opt)]

    def check_input(self, array: np.ndarray) -> np.ndarray:
        """Validate an input array against the contract; returns it (contiguous, right dtype)."""
        if array.dtype != np.dtype(self.input.dtype):
            raise TypeError(f"{self.encoder} encoder expects {self.input.dtype} {self.input.name}, got {array.dtype}")
        if array.ndim != len(self.input.shape):
            raise ValueError(f"{self.encoder} encoder expects {self.input.name} of rank {len(self.input.shape)}, got shape {array.shape}")
        for axis, (want, got) in enumerate(zip(self.input.shape, array.shape)):
            if isinstance(want, int) and want != got:
                raise ValueError(f"{self.encoder} encoder expects {self.input.name} shape {self.input.shape}, got {array.shape} (axis {axis})")
            if isinstance(want, str) and want in self.axis_ranges:
                lo, _, hi = self.axis_ranges[want]
                if want != "batch" and not lo <= got <= hi:
                    raise ValueError(f"{self.encoder} encoder: {want}={got} outside [{lo}, {hi}]")
        return np.ascontiguousarray(array)


# Default shape ranges. Batch max 64 covers the benchmarks' batch 32 with headroom; text opt 16 is a
# typical prompt ("a photo of a {label}.") and 77 is CLIP's context length.
DEFAULT_MAX_BATCH = 64
DEFAULT_OPT_BATCH = 8


def image_contract(image_size: int, embed_dim: int, max_batch: int = DEFAULT_MAX_BATCH,
                   opt_batch: int = DEFAULT_OPT_BATCH) -> EncoderContract:
    return EncoderContract(
        encoder="image",
        input=TensorSpec("pixels", "uint8", ("batch", image_size, image_size, 3)),  # NHWC RGB
        output=TensorSpec("image_embeds", "float32", ("batch", embed_dim)),
        axis_ranges={"batch": (1, opt_batch, max_batch)},
        sample={"batch": 2},
    )


def text_contract(context_length: int, embed_dim: int, max_batch: int = DEFAULT_MAX_BATCH,
                  opt_batch: int = DEFAULT_OPT_BATCH, max_length: int | None = None,
                  tokens: TextTokens | None = None) -> EncoderContract:
    if tokens is not None and tokens.fixed_length:
        return EncoderContract(
            encoder="text",
            input=TensorSpec("input_ids", "int32", ("batch", context_length)),  # always the full context
            output=TensorSpec("text_embeds", "float32", ("batch", embed_dim)),
            axis_ranges={"batch": (1, opt_batch, max_batch)},
            sample={"batch": 2},
            tokens=tokens,
        )
    max_length = context_length if max_length is None else min(max_length, context_length)
    return EncoderContract(
        encoder="text",
        input=TensorSpec("input_ids", "int32", ("batch", "sequence")),
        output=TensorSpec("text_embeds", "float32", ("batch", embed_dim)),
        # sequence >= 2: every tokenized text holds at least BOS and EOT.
        axis_ranges={"batch": (1, opt_batch, max_batch), "sequence": (2, min(16, max_length), max_length)},
        sample={"batch": 2, "sequence": min(9, max_length)},
        tokens=tokens,
    )
