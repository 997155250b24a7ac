"""INT8 (static QDQ, dynamic) and FP16 artifacts: calibrated on real photos and captions, gated against eager fp32
on data calibration never saw, sensitivity search that finds a layer whose quantization breaks the model, and the
runtime picking them with clip_rt.load(..., precision=...)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clip_rt.package import Package
from clip_rt.tolerances import tolerance
from conftest import int8_data_args as data_args
from runtime_reference import op_counts

torch = pytest.importorskip("torch", reason="the exporter needs the export extra (torch)")
transformers = pytest.importorskip("transformers", reason="the exporter needs the export extra (transformers)")

INT8 = tolerance("onnxruntime", "int8")
FP16 = tolerance("onnxruntime", "fp16")


def export(source: Path, out: Path, *args: str) -> Path:
    from clip_rt.cli import main

    rc = main(["export", str(source), "-o", str(out), *args])
    assert rc == 0, f"export failed with exit code {rc}"
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def ort_optimized_ops(path: Path, tmp_path: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime's CPU provider actually runs (after its load-time rewrites)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / f"{path.stem}.ort-optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return op_counts(opts.optimized_model_filepath)


# -- INT8 ------------------------------------------------------------------------------------------------------------
def test_int8_manifest_records_recipe_data_and_gate(tiny_q_package: Path) -> None:
    """Two gated INT8 artifacts per encoder: the QDQ file (portable: TensorRT) and its lowering for ONNX Runtime's
    CPU (what clip_rt.load picks), with one recipe and calibration record."""
    pkg = Package.open(tiny_q_package)
    for encoder, a in [(e, pkg.artifact(e, "int8", portable=p)) for e in ("image", "text") for p in (True, False)]:
        assert a.file == (f"{encoder}.int8.onnx" if not a.optimized else f"{encoder}.int8.opt.onnx") and not a.forced
        q = a.extra["quantization"]
        assert q["recipe"]["format"] == "QDQ" and q["recipe"]["calibration"] == "percentile"
        assert q["recipe"]["tensorrt_compatible"] is True
        assert "per-channel" in q["recipe"]["weights"]
        cal = q["calibration"]
        assert cal["images"] >= 32 and cal["texts"] >= 100 and "flickr8k" in cal["images_source"]
        sens = q["sensitivity"]
        units = {"layers.0", "layers.1", "projection"} | ({"patch_embedding"} if encoder == "image" else set())
        assert set(sens["unit_cost_alone"]) == units
        assert sens["steps"][0]["excluded"] == [] and sens["target"]["mean_cos"] > INT8.mean_cosine
        assert a.parity["thresholds"] == {"min_cosine": INT8.min_cosine, "mean_cosine": INT8.mean_cosine}
        assert a.parity["min_cosine"] >= INT8.min_cosine and a.parity["mean_cosine"] >= INT8.mean_cosine
        assert a.parity["min_cosine"] < 0.99999, "an int8 artifact identical to fp32 means nothing was quantized"
        zs = a.parity["zero_shot"]
        assert zs["top1_agreement"] >= INT8.top1_agreement and zs["threshold"] == INT8.top1_agreement
        assert zs["n"] >= 100 and zs["classes"] == 10 and "cifar10" in zs["data"]


def test_int8_graph_is_qdq_s8_and_runs_as_integer_matmuls(tiny_q_package: Path, tmp_path: Path) -> None:
    """Symmetric int8 Q/DQ (zero point 0: TensorRT's explicit quantization), and ONNX Runtime's CPU turns every
    weight MatMul into MatMulIntegerToFloat (no fp32 weight MatMul and no per-run weight dequantization left)."""
    import onnx
    from onnx import numpy_helper

    pkg = Package.open(tiny_q_package)
    for encoder in ("image", "text"):
        path = pkg.path(pkg.artifact(encoder, "int8", portable=True))
        model = onnx.load(str(path))
        init = {i.name: i for i in model.graph.initializer}
        qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert qs, "no QuantizeLinear: not a QDQ graph"
        for q in qs:
            zp = numpy_helper.to_array(init[q.input[2]])
            assert zp.dtype == np.int8 and not zp.any(), f"{q.name}: zero point {zp} (TensorRT needs int8, 0)"
        if encoder == "image":  # the patch embedding reads pixels - 128: exact in int8 at scale 1, never calibrated
            prod = {o: n for n in model.graph.node for o in n.output}
            mm = next(n for n in model.graph.node if n.name == "/patch_embedding/MatMul")
            q = prod[prod[mm.input[0]].input[0]]  # MatMul <- DequantizeLinear <- QuantizeLinear
            assert q.op_type == "QuantizeLinear" and float(numpy_helper.to_array(init[q.input[1]])) == 1.0
        layers = pkg.model["vision" if encoder == "image" else "text"]["layers"]
        ops = ort_optimized_ops(path, tmp_path)
        assert ops.get("MatMulIntegerToFloat", 0) >= 6 * layers + 1, ops
        # What is left as float MatMul is attention's two activation x activation products per layer, nothing else.
        assert ops.get("MatMul", 0) + ops.get("FusedMatMul", 0) <= 2 * layers, ops
        assert ops.get("DequantizeLinear", 0) == 0, f"weights dequantized at run time: {ops}"


def test_calibration_disjoint_from_evaluation(tiny_source: Path, data_dir: Path, tmp_path: Path) -> None:
    """The same folder for --calib and --eval-images: the evaluation images are dropped from calibration."""
    from clip_rt.export.calibration import _digest, folder_texts, load_calibration
    from clip_rt.export.validate import load_eval_images

    folder = data_dir / "caltech101" / "images"
    eval_crops, _ = load_eval_images(folder, 64, 64)
    prompts, _ = folder_texts(data_dir / "caltech101")  # caltech101 has classes.txt + templates.txt
    held_text = prompts[7]
    data = load_calibration(data_dir / "caltech101", None, 64, 64, list(eval_crops), [held_text],
                            max_images=300, max_texts=100000)
    assert data.dropped_images > 0
    assert not {_digest(c) for c in data.crops} & {_digest(c) for c in eval_crops}
    assert len(data.crops) >= 200  # 909 images: dropping the evaluation ones leaves plenty
    assert held_text not in data.texts and data.dropped_texts == 1
    assert len(data.texts) == len(set(prompts)) - 1


def test_int8_without_calibration_data_is_refused(tiny_source: Path, data_dir: Path, tmp_path: Path) -> None:
    from clip_rt.errors import InputError
    from clip_rt.export.pipeline import ExportOptions, export_package

    out = tmp_path / "nocalib"
    with pytest.raises(InputError, match="--calib DIR"):
        export_package(tiny_source, out, ExportOptions(precisions=("int8",), eval_images=str(data_dir / "cifar10")),
                       log=lambda m: None)
    with pytest.raises(InputError, match="--eval-images"):
        export_package(tiny_source, out, ExportOptions(precisions=("int8",), extra={"calib": str(data_dir / "flickr8k")}),
                       log=lambda m: None)
    assert not out.exists()


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_calibration_methods(method: str, tiny_source: Path, data_dir: Path, tmp_path: Path,
                             tiny_q_package: Path) -> None:
    """Each method gives its own activation scales (compared with the percentile package) and passes the gate."""
    import onnx
    from onnx import numpy_helper

    out = export(tiny_source, tmp_path / method, "--precision", "int8", "--int8-method", method,
                 "--no-int8-sensitivity", "--calib-images", "64", "--calib-captions", "200", *data_args(data_dir)[:4])
    pkg, ref = Package.open(out), Package.open(tiny_q_package)
    for encoder in ("image", "text"):
        a = pkg.artifact(encoder, "int8")
        assert a.extra["quantization"]["recipe"]["calibration"] == method and "sensitivity" not in a.extra["quantization"]
        assert a.parity["mean_cosine"] >= INT8.mean_cosine

        def scales(path: Path) -> dict[str, float]:
            m = onnx.load(str(path))
            init = {i.name: i for i in m.graph.initializer}
            return {n.input[0]: float(numpy_helper.to_array(init[n.input[1]])) for n in m.graph.node
                    if n.op_type == "QuantizeLinear"}

        qdq = pkg.artifact(encoder, "int8", portable=True)
        mine, theirs = scales(pkg.path(qdq)), scales(ref.path(ref.artifact(encoder, "int8", portable=True)))
        shared = set(mine) & set(theirs)
        assert shared and any(abs(mine[k] - theirs[k]) > 1e-6 * theirs[k] for k in shared)


def test_dynamic_int8(tiny_source: Path, data_dir: Path, tmp_path: Path) -> None:
    out = export(tiny_source, tmp_path / "dyn", "--precision", "int8", "--int8-mode", "dynamic",
                 "--eval-images", str(data_dir / "caltech101" / "images"))
    pkg = Package.open(out)
    for encoder in ("image", "text"):
        a = pkg.artifact(encoder, "int8")
        assert a.extra["quantization"]["recipe"]["format"].startswith("dynamic")
        assert a.parity["mean_cosine"] >= INT8.mean_cosine and a.parity["min_cosine"] >= INT8.min_cosine
        import onnx

        ops = {n.op_type for n in onnx.load(str(pkg.path(a)), load_external_data=False).graph.node}
        assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}, ops


# -- sensitivity search --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def outlier_source(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with one huge activation channel in text layer 1's MLP (fc1 column x1000, fc2 row /1000),
    like the outlier features of trained CLIPs: quantizing fc2's input then zeroes every other channel."""
    from transformers import CLIPModel

    out = tmp_path_factory.mktemp("outlier") / "hf"
    shutil.copytree(tiny_source, out)
    clip = CLIPModel.from_pretrained(tiny_source)
    mlp = clip.text_model.encoder.layers[1].mlp
    with torch.no_grad():
        mlp.fc1.weight[5] *= 1000.0
        mlp.fc1.bias[5] = mlp.fc1.bias[5].abs() * 1000.0 + 50.0  # always active: a big positive channel
        mlp.fc2.weight[:, 5] /= 1000.0
    clip.save_pretrained(out)
    return out


def test_sensitivity_search_excludes_the_breaking_layer(outlier_source: Path, data_dir: Path, tmp_path: Path) -> None:
    from clip_rt.errors import ValidationFailed
    from clip_rt.export.pipeline import ExportOptions, export_package

    extra = {"calib": str(data_dir / "flickr8k"), "int8_method": "minmax", "calib_images": 64, "calib_captions": 200}
    common = dict(precisions=("int8",), eval_images=str(data_dir / "caltech101" / "images"))
    # Without the search, the text artifact falls below the gate and nothing is written.
    with pytest.raises(ValidationFailed, match="text int8 artifact fails its accuracy gate"):
        export_package(outlier_source, tmp_path / "nosearch", ExportOptions(**common, extra={**extra, "int8_sensitivity": False}),
                       log=lambda m: None)
    assert not (tmp_path / "nosearch").exists()
    out = export_package(outlier_source, tmp_path / "search", ExportOptions(**common, extra=extra), log=lambda m: None)
    a = Package.open(out).artifact("text", "int8")
    sens = a.extra["quantization"]["sensitivity"]
    costs = sens["unit_cost_alone"]
    assert next(iter(costs)) == "layers.1", f"the outlier layer should cost the most: {costs}"
    assert sens["excluded"][0] == "layers.1"
    assert "/text/encoder/layers.1/mlp/fc2/MatMul" in a.extra["quantization"]["excluded_nodes"]
    assert a.parity["min_cosine"] >= INT8.min_cosine and not a.forced
    # The lowering keeps the excluded layer fp32 too: its fused Attention and its MatMuls stay float.
    assert a.file == "text.int8.opt.onnx" and len(a.extra["graph"]["kept_fp32"]) == 1
    assert a.extra["graph"]["ops"]["QAttention"] == 1


def test_force_writes_a_failing_int8_and_says_so(outlier_source: Path, data_dir: Path, tmp_path: Path) -> None:
    from clip_rt.export.pipeline import ExportOptions, export_package

    extra = {"calib": str(data_dir / "flickr8k"), "int8_method": "minmax", "int8_sensitivity": False,
             "calib_images": 64, "calib_captions": 200}
    out = export_package(outlier_source, tmp_path / "forced", ExportOptions(
        precisions=("int8",), eval_images=str(data_dir / "caltech101" / "images"), force=True, extra=extra),
        log=lambda m: None)
    a = Package.open(out).artifact("text", "int8")
    assert a.forced and a.parity["min_cosine"] < INT8.min_cosine


# -- FP16 ------------------------------------------------------------------------------------------------------------
def test_fp16_keeps_norms_in_fp32_and_records_gpu_validation(tiny_q_package: Path) -> None:
    import onnx
    import onnxruntime as ort

    pkg = Package.open(tiny_q_package)
    for encoder in ("image", "text"):
        a = pkg.artifact(encoder, "fp16")
        assert a.parity["min_cosine"] >= FP16.min_cosine and a.parity["mean_cosine"] >= FP16.mean_cosine
        assert a.parity["zero_shot"]["top1_agreement"] >= FP16.top1_agreement
        gpu = a.extra["validation"]["gpu"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            assert isinstance(gpu, dict) and gpu["passed"]
        else:
            assert isinstance(gpu, str) and gpu.startswith("not run")
        model = onnx.shape_inference.infer_shapes(onnx.load(str(pkg.path(a))))
        types = {v.name: v.type.tensor_type.elem_type for v in
                 [*model.graph.value_info, *model.graph.input, *model.graph.output]}
        types.update({i.name: i.data_type for i in model.graph.initializer})
        F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
        assert model.graph.output[0].type.tensor_type.elem_type == F32
        kept = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax", "ReduceL2")]
        assert kept and all(types.get(n.input[0]) == F32 for n in kept)
        weights = [types[n.input[1]] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in
                   {i.name for i in model.graph.initializer}]
        assert weights and all(t == F16 for t in weights), "MatMul weights should be fp16"


# -- through the runtime -----------------------------------------------------------------------------------------------
def test_load_precision_int8_uses_int8_artifacts(tiny_q_package: Path, data_dir: Path) -> None:
    import clip_rt

    files = sorted((data_dir / "imagenet_sample" / "images").iterdir())[:12]
    texts = ["a photo of a goldfish.", "a diagram of a bridge", "two people walking on a beach at sunset"]
    with clip_rt.load(tiny_q_package) as fp32, clip_rt.load(tiny_q_package, precision="int8") as q:
        assert q.describe()["files"] == {"image": "image.int8.opt.onnx", "text": "text.int8.opt.onnx"}
        ci = cosines(fp32.encode_images(files, batch_size=5), q.encode_images(files, batch_size=5))
        ct = cosines(fp32.encode_texts(texts), q.encode_texts(texts))
    assert ci.min() >= INT8.min_cosine and ct.min() >= INT8.min_cosine
    assert ci.min() < 0.99999 or ct.min() < 0.99999


def test_openvino_runs_the_qdq_file_as_integer_gemms(tiny_q_package: Path, tiny_source: Path, data_dir: Path) -> None:
    """backend='openvino', precision='int8': the QDQ file compiled to integer GEMMs, within the INT8 gate against
    eager fp32 on photos and captions calibration never saw, at batch sizes and lengths unlike the export's."""
    pytest.importorskip("openvino", reason="the openvino backend needs the openvino extra")
    import clip_rt
    from runtime_reference import hf_reference

    files = [str(p) for p in sorted((data_dir / "imagenet_sample" / "images").iterdir())[::5]]
    texts = ["a photo of a goldfish.", "a diagram of a bridge", "two people walking on a beach at sunset",
             "a close-up photo of a very small red and white striped lighthouse standing on a rocky island"]
    pkg = Package.open(tiny_q_package)
    n_quantized = {e: quantized_weights(pkg.path(pkg.artifact(e, "int8", portable=True))) for e in ("image", "text")}
    with clip_rt.load(tiny_q_package, backend="openvino", precision="int8", threads=2) as q:
        info = q.describe()
        got_i, got_t = q.encode_images(files, batch_size=6), q.encode_texts(texts, batch_size=3)
    assert info["files"] == {"image": "image.int8.onnx", "text": "text.int8.onnx"}
    for encoder, gemms in info["gemm_precisions"].items():
        integer = sum(n for by in gemms.values() for p, n in by.items() if p in ("i8", "u8"))
        assert integer == n_quantized[encoder] > 0, (encoder, gemms, n_quantized)
    ref = hf_reference(str(tiny_source))
    ci, ct = cosines(got_i, ref.image_embeds(files)), cosines(got_t, ref.text_embeds(texts))
    assert ci.min() >= INT8.min_cosine and ci.mean() >= INT8.mean_cosine, (ci.min(), ci.mean())
    assert ct.min() >= INT8.min_cosine and ct.mean() >= INT8.mean_cosine, (ct.min(), ct.mean())
    assert ci.min() < 0.99999 or ct.min() < 0.99999, "identical to fp32: nothing ran quantized"


def quantized_weights(path: Path) -> int:
    """How many weights the QDQ file holds in int8 (DequantizeLinear nodes reading an initializer)."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    return sum(n.op_type == "DequantizeLinear" and n.input[0] in weights for n in graph.node)


def test_lowered_int8_is_the_qdq_artifact_in_integer_ops(tiny_q_package: Path, tmp_path: Path) -> None:
    """The lowered file holds QAttention per fused attention and MatMulIntegerToFloat (bias folded) per other weight
    MatMul, no weight left in float, and computes what the QDQ file computes, at shapes other than the trace's."""
    import onnx
    import onnxruntime as ort

    pkg = Package.open(tiny_q_package)
    for encoder in ("image", "text"):
        low, qdq = pkg.artifact(encoder, "int8"), pkg.artifact(encoder, "int8", portable=True)
        assert low.optimized and low.extra["graph"]["lowered_from"] == qdq.file
        layers = pkg.model["vision" if encoder == "image" else "text"]["layers"]
        full = layers - 1 if encoder == "image" else layers  # the image's class-token layer has no fused attention
        ops = op_counts(pkg.path(low))
        assert ops.get("QAttention", 0) == full == low.extra["graph"]["ops"]["QAttention"]
        assert "Attention" not in ops and "DequantizeLinear" not in ops
        assert ops["MatMulIntegerToFloat"] == low.extra["graph"]["ops"]["MatMulIntegerToFloat"]
        assert low.extra["graph"]["biases_folded"] >= 3 * full
        # No weight MatMul left in float in the file (the image class-token layer keeps its two activation MatMuls).
        m = onnx.load(str(pkg.path(low)))
        init = {i.name for i in m.graph.initializer}
        assert not [n.name for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in init]
        contract = pkg.contract(encoder)
        sessions = [ort.InferenceSession(str(pkg.path(a)), providers=["CPUExecutionProvider"]) for a in (low, qdq)]
        shapes = [{"batch": 3}] if encoder == "image" else [{"batch": 2, "sequence": 7}, {"batch": 3, "sequence": 77}]
        for axes in shapes:
            x = contract.sample_input(seed=5, **axes)
            a, b = (s.run(None, {contract.input.name: x})[0] for s in sessions)
            assert cosines(a, b).min() >= 0.9999, (encoder, axes)


def test_lowering_refuses_weights_from_another_export(tiny_q_package: Path, tmp_path: Path) -> None:
    """The QDQ weights must dequantize to the fused graph's: a fused graph with other weights is refused."""
    import onnx
    from onnx import numpy_helper

    from clip_rt.export.lower import lower_int8

    pkg = Package.open(tiny_q_package)
    fused = onnx.load(str(pkg.path(pkg.artifact("text", "fp32"))))
    for i, t in enumerate(fused.graph.initializer):
        if t.name.endswith("qkv_weight"):
            fused.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))
    onnx.save(fused, str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="do not match the fused graph"):
        lower_int8(tmp_path / "other.onnx", pkg.path(pkg.artifact("text", "int8", portable=True)), tmp_path / "x.onnx")


def test_lowering_follows_u8_activations_and_no_optimize(tiny_source: Path, data_dir: Path, tmp_path: Path) -> None:
    """--int8-activations u8 (asymmetric zero points) lowers with those zero points; --no-optimize has no fused graph
    to lower into, so the QDQ file is what load(precision="int8") runs."""
    import clip_rt

    common = ["--precision", "int8", "--no-int8-sensitivity", "--calib-images", "64", "--calib-captions", "200",
              *data_args(data_dir)[:4]]
    u8 = Package.open(export(tiny_source, tmp_path / "u8", "--int8-activations", "u8", *common))
    for encoder in ("image", "text"):
        low, qdq = u8.artifact(encoder, "int8"), u8.artifact(encoder, "int8", portable=True)
        assert low.file == f"{encoder}.int8.opt.onnx" and qdq.extra["quantization"]["recipe"]["tensorrt_compatible"] is False
        assert low.parity["min_cosine"] >= INT8.min_cosine and abs(low.parity["mean_cosine"] - qdq.parity["mean_cosine"]) < 1e-4
    plain = export(tiny_source, tmp_path / "plain", "--no-optimize", *common)
    assert sorted(a.file for a in Package.open(plain).artifacts if a.precision == "int8") == \
        ["image.int8.onnx", "text.int8.onnx"]
    with clip_rt.load(plain, precision="int8") as q:
        assert q.describe()["files"] == {"image": "image.int8.onnx", "text": "text.int8.onnx"}


def test_cli_options_round_trip() -> None:
    import argparse

    from clip_rt.export import quantize

    parser = argparse.ArgumentParser()
    quantize.add_cli_args(parser)
    args = parser.parse_args(["--calib", "d", "--int8-method", "entropy", "--int8-activations", "u8",
                              "--int8-exclude", "projection", "layers.0", "--no-int8-sensitivity", "--no-optimize"])
    extra = quantize.options_from_cli(args)
    opts = quantize.QuantizeOptions.from_extra(extra)
    assert extra["optimize"] is False and opts.calib == "d"
    assert opts.recipe.method == "entropy" and opts.recipe.activations == "u8"
    assert opts.recipe.exclude == ("projection", "layers.0") and opts.recipe.sensitivity is False
    assert json.dumps(opts.recipe.to_json())  # goes into the manifest as is


# -- ViT-B/32 -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_vitb32_int8_accuracy_on_unseen_real_data(vitb32_source: Path, data_dir: Path,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """The must-show accuracy rows: INT8 against eager fp32 on photos and captions calibration never saw.
    (The default recipe with smaller calibration sets: ~10 minutes on a busy 2-core machine.)"""
    out = export(vitb32_source, tmp_path_factory.mktemp("vitb32-int8") / "pkg", "--precision", "int8",
                 "--calib", str(data_dir / "flickr8k"), "--calib-images", "64", "--calib-captions", "256", "--eval-images", str(data_dir / "imagenet_sample" / "images"),
                 "--eval-texts", str(data_dir / "flickr8k" / "captions.csv"))
    pkg = Package.open(out)
    for encoder, a in [(e, pkg.artifact(e, "int8", portable=p)) for e in ("image", "text") for p in (True, False)]:
        assert a.parity["mean_cosine"] >= 0.995 and a.parity["min_cosine"] >= 0.98, (encoder, a.file, a.parity)
        assert pkg.artifact(encoder, "fp32").parity["min_cosine"] >= 0.99999
        assert a.extra["quantization"]["calibration"]["texts_dropped_as_eval"] > 0 or encoder == "image"


def test_calibration_texts_of_a_data_sets_images_folder(data_dir: Path) -> None:
    """--calib DATASET/images: the photos there, the captions or class prompts of DATASET/ (the layout of
    ../shared/data), so `--calib ../shared/data/imagenet_sample/images` calibrates both encoders."""
    from clip_rt.export.calibration import folder_texts, read_texts

    texts, source = folder_texts(data_dir / "imagenet_sample" / "images")
    classes = read_texts(data_dir / "imagenet_sample" / "classes.txt")
    templates = read_texts(data_dir / "imagenet_sample" / "templates.txt")
    assert source == f"{data_dir / 'imagenet_sample'}/classes.txt x templates"
    assert len(texts) == len(classes) * len(templates) and texts[0] == templates[0].format(classes[0])
    assert folder_texts(data_dir / "flickr8k" / "images")[1] == str(data_dir / "flickr8k" / "captions.csv")
