"""Graph optimization at export: ONNX Runtime's CLIP fusions fire on our traced graphs, keep fp32 parity with eager
transformers, are recorded in the manifest, and are what ONNX Runtime loads (TensorRT gets the plain graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clip_rt.package import Package
from clip_rt.tolerances import tolerance
from runtime_reference import op_counts

torch = pytest.importorskip("torch", reason="the exporter needs the export extra (torch)")
transformers = pytest.importorskip("transformers", reason="the exporter needs the export extra (transformers)")

FP32 = tolerance("onnxruntime", "fp32")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_fusions_fire_and_are_recorded(tiny_package: Path) -> None:
    """Every full layer's attention becomes one Attention node (text: causal; the image's last layer runs for the
    class token only and stays unfused), SkipLayerNormalization is split back into Add + LayerNormalization, and the
    manifest says what fused and what was split."""
    pkg = Package.open(tiny_package)
    layers = {"image": pkg.model["vision"]["layers"], "text": pkg.model["text"]["layers"]}
    for encoder, n in layers.items():
        opt = pkg.artifact(encoder, "fp32")
        assert opt.file == f"{encoder}.opt.onnx" and opt.optimized
        graph = opt.extra["graph"]
        full = n - 1 if encoder == "image" else n
        assert graph["optimized"] is True and graph["layers"] == n and graph["attention_layers"] == full
        assert graph["fusions"]["Attention"] == full and graph["fusions"]["QuickGelu"] == n
        assert graph["fusions"]["SkipLayerNormalization"] >= full
        split = graph["split_after_fusion"]
        assert split == {"SkipLayerNormalization": graph["fusions"]["SkipLayerNormalization"]}
        counts = op_counts(pkg.path(opt))
        # The manifest's numbers are the file's: recount the nodes.
        for op, k in graph["fusions"].items():
            want = k - split.get(op, 0) + (sum(split.values()) if op == "LayerNormalization" else 0)
            assert counts.get(op, 0) == want, f"{encoder}: manifest says {op} x{want}, file has {counts.get(op, 0)}"
        assert "SkipLayerNormalization" not in counts
        # One softmax left in the image graph: the class-token layer's. None in the text graph.
        assert counts.get("Softmax", 0) == (1 if encoder == "image" else 0), f"{encoder}: unfused attention left"
        # The tiny image encoder has one fusable layer of two (the other is the class-token layer).
        assert graph["nodes"]["after"] < graph["nodes"]["before"] * (0.6 if encoder == "image" else 0.5)
        if encoder == "text":
            import onnx

            attn = [nd for nd in onnx.load(str(pkg.path(opt)), load_external_data=False).graph.node
                    if nd.op_type == "Attention"]
            assert all(any(a.name == "unidirectional" and a.i == 1 for a in nd.attribute) for nd in attn), \
                "text attention must be causal"


def test_plain_graph_kept_for_tensorrt(tiny_package: Path) -> None:
    pkg = Package.open(tiny_package)
    for encoder in ("image", "text"):
        plain = pkg.artifact(encoder, "fp32", portable=True)
        assert plain.file == f"{encoder}.onnx" and not plain.optimized
        counts = op_counts(pkg.path(plain))
        assert not {"Attention", "SkipLayerNormalization", "QuickGelu"} & set(counts), "plain graph has contrib ops"
        import onnx

        domains = {nd.domain for nd in onnx.load(str(pkg.path(plain)), load_external_data=False).graph.node}
        assert domains <= {"", "ai.onnx"}, f"plain graph uses non-standard domains {domains}"


def test_optimized_parity_other_shapes(tiny_package: Path, tiny_source: Path) -> None:
    """The fused graphs against eager transformers at batches and lengths other than the traced ones, including
    77-padded texts (padding after EOT must not leak through the fused causal attention)."""
    from transformers import CLIPModel

    pkg = Package.open(tiny_package)
    clip = CLIPModel.from_pretrained(tiny_source).eval()
    img = session(pkg.path(pkg.artifact("image", "fp32")))
    txt = session(pkg.path(pkg.artifact("text", "fp32")))
    ic, tc = pkg.contract("image"), pkg.contract("text")
    mean = torch.tensor(pkg.preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pkg.preprocess["std"]).view(1, 3, 1, 1)
    for batch in (1, 6):
        pixels = ic.sample_input(seed=batch + 40, batch=batch)
        with torch.no_grad():
            x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
            ref = clip.get_image_features(pixel_values=x).pooler_output.numpy()
        assert cosines(ref, img.run(None, {"pixels": pixels})[0]).min() >= FP32.min_cosine
    for batch, length in ((1, 3), (5, 16), (2, 77)):
        ids = tc.sample_input(seed=length + 40, batch=batch, sequence=length)
        with torch.no_grad():
            ref = clip.get_text_features(input_ids=torch.from_numpy(ids).long()).pooler_output.numpy()
        got = txt.run(None, {"input_ids": ids})[0]
        assert cosines(ref, got).min() >= FP32.min_cosine, (batch, length)


def test_causal_mask_patch_is_exact_and_restored(tiny_source: Path) -> None:
    """Inside fusable_causal_mask the text model computes bit-identical outputs; on exit (also after an error)
    transformers' own function is back."""
    from transformers import CLIPModel
    from transformers.models.clip import modeling_clip

    from clip_rt.export.wrappers import fusable_causal_mask

    clip = CLIPModel.from_pretrained(tiny_source).eval()
    original = modeling_clip.create_causal_mask
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407, 49407, 49407],
                        [49406, 320, 1929, 49407, 49407, 49407, 49407, 49407, 49407]])
    with torch.no_grad():
        ref = clip.text_model(input_ids=ids).last_hidden_state
        with fusable_causal_mask():
            assert modeling_clip.create_causal_mask is not original
            patched = clip.text_model(input_ids=ids).last_hidden_state
    assert torch.equal(ref, patched)
    assert modeling_clip.create_causal_mask is original
    with pytest.raises(ZeroDivisionError), fusable_causal_mask():
        1 / 0
    assert modeling_clip.create_causal_mask is original


def test_without_patch_text_attention_does_not_fuse(tiny_source: Path, tmp_path: Path) -> None:
    """Why the patch exists: traced with transformers' own mask, ONNX Runtime fuses no text attention.
    If this starts failing, transformers emits a fusable mask by itself and the patch can go."""
    from transformers import CLIPModel

    from clip_rt.contract import text_contract
    from clip_rt.export import wrappers
    from clip_rt.export.onnx import export_onnx
    from clip_rt.export.optimize import encoder_dims, optimize_onnx

    clip = CLIPModel.from_pretrained(tiny_source, attn_implementation="eager").eval()
    contract = text_contract(77, 32)
    heads, width, layers = encoder_dims(clip.config, "text")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wrappers, "fusable_causal_mask", _no_patch)
        export_onnx(wrappers.TextEncoder(clip), contract, tmp_path / "text.onnx")
    report = optimize_onnx(tmp_path / "text.onnx", tmp_path / "text.opt.onnx", "text", heads, width, layers)
    assert report.fusions.get("Attention", 0) < layers
    assert report.warning() is not None and "attention" in report.warning()


def _no_patch():
    import contextlib

    return contextlib.nullcontext()


def test_no_optimize_option(tiny_source: Path, tmp_path: Path) -> None:
    from clip_rt.export.pipeline import ExportOptions, export_package

    out = export_package(tiny_source, tmp_path / "plain", ExportOptions(extra={"optimize": False}), log=lambda m: None)
    pkg = Package.open(out)
    assert sorted(a.file for a in pkg.artifacts) == ["image.onnx", "text.onnx"]
    assert not any(a.optimized for a in pkg.artifacts)


def test_runtime_loads_the_fused_graph(tiny_package: Path) -> None:
    import clip_rt

    with clip_rt.load(tiny_package) as model:
        files = model.describe()["files"]
        assert files == {"image": "image.opt.onnx", "text": "text.opt.onnx"}
        emb = model.encode_texts(["a photo of a cat", "a dog"])
        assert emb.shape == (2, 32)


def test_aliased_rows_are_padded_without_changing_the_result() -> None:
    """pad_aliased_rows: MLP hidden widths whose rows are 4 KiB long are padded through the first MatMul (weights, a
    bias shared by two layers), a plain 4 KiB input gets a Pad node, other widths are left alone, and ONNX Runtime
    gives the same outputs before and after."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from clip_rt.export.graph import ensure_contrib_opset
    from clip_rt.export.optimize import ROW_PAD, pad_aliased_rows

    rng = np.random.default_rng(0)
    w = lambda *shape: numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32),
                                               f"w{len(inits)}")
    inits: list = []
    for shape in ((64, 1024), (1024, 64), (64, 1024), (1024, 64), (1024, 32), (64, 1000), (1000, 32)):
        inits.append(w(*shape))
    inits.append(numpy_helper.from_array((rng.standard_normal(1024) * 0.1).astype(np.float32), "shared_bias"))
    nodes = []
    h = "x"
    for layer in range(2):  # two MLPs sharing one bias tensor (the export deduplicates equal constants)
        fc1, fc2 = inits[2 * layer].name, inits[2 * layer + 1].name
        nodes += [helper.make_node("MatMul", [h, fc1], [f"h{layer}"], name=f"fc1_{layer}"),
                  helper.make_node("Add", ["shared_bias", f"h{layer}"], [f"hb{layer}"], name=f"bias_{layer}"),
                  helper.make_node("QuickGelu", [f"hb{layer}"], [f"a{layer}"], name=f"act_{layer}",
                                   domain="com.microsoft", alpha=1.702),
                  helper.make_node("MatMul", [f"a{layer}", fc2], [f"y{layer}"], name=f"fc2_{layer}")]
        h = f"y{layer}"
    inits.append(numpy_helper.from_array(np.array([0, 5, 1024], np.int64), "flat"))
    nodes += [helper.make_node("Reshape", ["z", "flat"], ["zf"], name="flatten"),
              helper.make_node("MatMul", ["zf", inits[4].name], ["p"], name="patches"),  # 4 KiB rows, no MLP above
              helper.make_node("MatMul", ["zf", inits[4].name], ["p2"], name="patches_again"),  # shares the Pad
              helper.make_node("MatMul", ["x", inits[5].name], ["u"], name="wide"),  # 1000 floats: not aliased
              helper.make_node("MatMul", ["u", inits[6].name], ["v"], name="narrow")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 7, 64]),
                                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 5, 32, 32])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y1", "p", "p2", "v")],
                              inits)
    # No com.microsoft opset import, as in the optimizer's model before it is saved: the Pad's rank must still be found.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((3, 7, 64)).astype(np.float32),
             "z": rng.standard_normal((3, 5, 32, 32)).astype(np.float32)}

    def run(m):
        runnable = onnx.ModelProto()
        runnable.CopyFrom(m)
        ensure_contrib_opset(runnable)
        return ort.InferenceSession(runnable.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)

    before = run(model)

    padded = onnx.ModelProto()
    padded.CopyFrom(model)
    assert pad_aliased_rows(padded) == {"hidden": 2, "pad": 1}
    after = run(padded)
    for a, b in zip(before, after):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)

    shapes = {n.name: [list(i.dims) for i in padded.graph.initializer if i.name in n.input] for n in padded.graph.node}
    wide = 1024 + ROW_PAD
    for layer in range(2):
        assert shapes[f"fc1_{layer}"] == [[64, wide]] and shapes[f"bias_{layer}"] == [[wide]]
        assert shapes[f"fc2_{layer}"] == [[wide, 64]]
    assert shapes["patches"] == shapes["patches_again"] == [[wide, 32]]
    assert shapes["wide"] == [[64, 1000]] and shapes["narrow"] == [[1000, 32]]
    assert [n.op_type for n in padded.graph.node].count("Pad") == 1
    # One padded copy per constant (the two fc1 Adds share one), the originals gone, the Pad's pads added.
    names = {i.name for i in padded.graph.initializer}
    p = f"padded{ROW_PAD}"
    assert names == {f"w0/{p}_axis1", f"w1/{p}_axis0", f"w2/{p}_axis1", f"w3/{p}_axis0",
                     f"w4/{p}_axis0", "w5", "w6", f"shared_bias/{p}_axis0", "flat", f"zf_{p}/pads"}


@pytest.mark.slow
def test_vitb32_all_layers_fuse(vitb32_package: Path) -> None:
    pkg = Package.open(vitb32_package)
    for encoder, layers in (("image", 12), ("text", 12)):
        graph = pkg.artifact(encoder, "fp32").extra["graph"]
        full = layers - 1 if encoder == "image" else layers  # the image's class-token layer does not fuse
        assert graph["fusions"]["Attention"] == full and graph["fusions"]["QuickGelu"] == layers
        # 3072 (image) and 2048 (text) hidden floats are 4 KiB multiples; the image's patches get a Pad node
        assert graph["padded_rows"] == ({"hidden": layers, "pad": 1} if encoder == "image" else {"hidden": layers})
        assert pkg.artifact(encoder, "fp32").parity["min_cosine"] >= FP32.min_cosine
