"""`metrix export`: a real trained run to ONNX, checked against PyTorch's own evaluation path,
loaded back with its metadata, quantised, and refused cleanly on bad input."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from metrix.cli.run_export import export_run
from metrix.export import onnx_export
from metrix.export.cpu_kernels import int8_kernels
from metrix.export.onnx_export import ExportError, ImageEmbedder, check_parity, verification_images
from metrix.export.quantize import (
    CALIBRATION_IMAGES,
    DEFAULT_FORM,
    MIN_FIDELITY,
    UNSAFE_FORM,
    agreement,
    kernel_fidelity,
    quantize_int8,
)
from metrix.export.runtime import ModelError, ModelMetadata, load_embedder, preprocess, read_metadata
from metrix.images import open_rgb
from metrix.training.checkpoint import CheckpointError, build_model, load_checkpoint
from metrix.transforms import eval_transform

from .training_helpers import metrix_cli


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """A copy of the session's tiny run, so these tests may break and re-export it freely."""
    copy = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.fixture(scope="module")
def exported(run):
    """The default export: the best checkpoint (the run has a validation split)."""
    result = metrix_cli("export", run, "--quantize", "int8", "--max-r1-drop", "100")
    checkpoint = run / "checkpoints" / (run / "best").read_text()
    return checkpoint, result.stdout


def _image_paths(run):
    return sorted(Path(json.loads((run / "config.json").read_text())["data"]).rglob("*.png"))


def _test_images(run, count):
    paths = _image_paths(run)
    return [open_rgb(p) for p in paths[:: len(paths) // count][:count]]


@pytest.mark.slow
def test_metadata_describes_the_run(exported):
    checkpoint, stdout = exported
    embedder = load_embedder(checkpoint / "model.onnx")
    meta, config = embedder.metadata, json.loads((checkpoint / "config.json").read_text())
    assert (meta.backbone, meta.loss, meta.mixup) == (config["model"]["backbone"], config["loss"], config["mixup"])
    assert meta.embedding_size == config["model"]["embedding_size"] == 32
    assert (
        meta.image_size == 32
        and meta.resize_size == 37
        and meta.interpolation == config["model"]["preprocessing"]["interpolation"]
    )
    assert meta.train_classes == len(config["data"]["train_classes"]) == 8
    assert meta.flip is config["train_config"]["flip"] and isinstance(meta.flip, bool)
    assert meta.weights_sha256 == hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert meta.quantization == "none" and meta.opset == onnx_export.OPSET and "dynamo" in meta.exporter
    assert read_metadata(checkpoint / "model.onnx") == meta
    (images,) = embedder.session.get_inputs()
    assert images.type == "tensor(uint8)" and images.shape[1:] == [32, 32, 3] and isinstance(images.shape[0], str)
    assert "parity  onnxruntime vs PyTorch, batch 1" in stdout and "batch 7" in stdout
    val_map = json.loads((checkpoint / "config.json").read_text())["metrics"]["val_map_at_r"]
    assert (
        stdout.splitlines()[0]
        == f"using checkpoint {checkpoint.name} (best on validation classes, val MAP@R {val_map:.1f})"
    )


@pytest.mark.parametrize("batch", [1, 7, 13])
def test_onnx_matches_pytorch_evaluation(exported, run, batch):
    """The oracle is PyTorch's evaluation path: torchvision transforms + the checkpoint's model."""
    checkpoint, _ = exported
    model = build_model(load_checkpoint(run, checkpoint.name))
    images = _test_images(run, batch)
    with torch.no_grad():
        expected = model(torch.stack([eval_transform(model.preprocessing)(im) for im in images])).numpy()
    got = load_embedder(checkpoint / "model.onnx").embed_images(images)
    assert got.shape == (batch, 32) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert (expected * got).sum(1).min() >= 0.99999
    assert np.abs(expected - got).max() <= 1e-4


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(50, 37), (37, 50), (91, 64), (37, 37), (300, 41)])
def test_preprocess_is_torchvisions_resize_and_centre_crop(size, interpolation):
    from torchvision import transforms as T

    from metrix.backbones import Preprocessing

    pre = Preprocessing(32, (0.5,) * 3, (0.5,) * 3, 0.875, interpolation)
    image = Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interpolation]
    expected = T.Compose([T.Resize(pre.resize_size, interpolation=mode, antialias=True), T.CenterCrop(32)])(image)
    meta = ModelMetadata(32, pre.resize_size, interpolation, 8, "b", "ms", "none", "d", 1, "h", "v")
    np.testing.assert_array_equal(preprocess(image, meta), np.asarray(expected))


def test_int8_model_is_quantised_and_measured(exported):
    checkpoint, stdout = exported
    path = checkpoint / "model.int8.onnx"
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8, fp32 = load_embedder(path), load_embedder(checkpoint / "model.onnx")
    assert int8.metadata.quantization == "int8" and int8.metadata.weights_sha256 == fp32.metadata.weights_sha256
    record = int8.metadata.int8
    assert record["form"] == DEFAULT_FORM.name and record["verified_kernels"] == int8_kernels()
    assert 0.9 < record["mean_cosine"] <= 1 and 0 < record["speedup"] and "120 queries" in record["data"]
    assert record["kernel_fidelity"] >= MIN_FIDELITY
    lines = [line for line in stdout.splitlines() if line.strip().startswith("int8")]
    assert "R@1 on folder data at" in lines[0] and "fp32" in lines[0] and "120 queries" in lines[0]
    assert "against fp32 on the same images: cosine mean" in lines[1]
    assert f"verified on {int8_kernels()} kernels" in lines[2] and "computes its own definition" in lines[2]
    batch = np.stack([fp32.preprocess(im) for im in _test_images(checkpoint.parent.parent, 16)])
    measured = agreement(fp32.embed(batch), int8.embed(batch))
    assert 0.9 < measured.mean_cosine < 1 - 1e-7, measured  # close to fp32, and really quantised
    assert kernel_fidelity(path, batch).mean_cosine >= MIN_FIDELITY  # this CPU computes what the model defines


HASWELL = {"F16C": True, "FMA3": True, "AVX2": True}
ALDER_LAKE = {**HASWELL}
SAPPHIRE_RAPIDS = {**HASWELL, "AVX512F": True, "AVX512BW": True, "AVX512VNNI": True, "AVX512_SPR": True}
SPR_FLAGS = {"f16c", "fma", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"}


@pytest.mark.parametrize(
    "features, flags, kernels",
    [
        (SAPPHIRE_RAPIDS, SPR_FLAGS, "amx"),
        (ALDER_LAKE, {"f16c", "fma", "avx2", "avx_vnni"}, "avx-vnni"),
        (HASWELL, {"f16c", "fma", "avx2"}, "avx2"),
        # emulated (qemu -cpu Haswell on a Sapphire Rapids host): /proc/cpuinfo is the host's
        (HASWELL, SPR_FLAGS, "avx2"),
        ({**HASWELL, "AVX512F": True, "AVX512BW": True}, {"f16c", "fma", "avx2", "avx512f", "avx512bw"}, "avx512"),
    ],
)
def test_the_int8_kernels_follow_the_cpu_this_process_runs_on(features, flags, kernels, monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert int8_kernels(features, flags) == kernels


def _embed_on_emulated_cpu(
    model: Path, batch: np.ndarray, tmp_path: Path, cpu: str = "Haswell"
) -> tuple[np.ndarray, str]:
    """The model's embeddings of `batch` computed by onnxruntime on an emulated CPU (QEMU user mode):
    onnxruntime then picks that CPU's int8 kernels. About 200x slower: keep batches small."""
    if shutil.which("qemu-x86_64") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the emulated-CPU test: install Debian's qemu-user (.ci/run does)")
        pytest.skip("needs qemu-x86_64 (Debian's qemu-user)")
    np.save(tmp_path / "batch.npy", batch)
    script = (
        "import sys, numpy as np; from metrix.export.runtime import load_embedder; "
        "from metrix.export.cpu_kernels import int8_kernels; print(int8_kernels()); "
        "np.save(sys.argv[3], load_embedder(sys.argv[1]).embed(np.load(sys.argv[2])))"
    )
    out = tmp_path / "embedded.npy"
    result = subprocess.run(
        ["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", script, str(model), str(tmp_path / "batch.npy"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "avx2"  # the emulated CPU's kernels, not this machine's
    return np.load(out), result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("form, sound", [(DEFAULT_FORM, True), (UNSAFE_FORM, False)], ids=["default", "unsafe"])
def test_int8_check_holds_on_avx2_kernels_and_catches_saturation(exported, form, sound, tmp_path):
    """The default form computes what it defines on a CPU without AVX-512 or VNNI too, as on this
    one; the form used before (u8 x s8 with 8-bit weights) saturates there, the same check says
    so, and loading it there warns once."""
    checkpoint, _ = exported
    fp32 = load_embedder(checkpoint / "model.onnx")
    model = tmp_path / "model.int8.onnx"
    quantize_int8(checkpoint / "model.onnx", model, _calibration_batch(checkpoint, fp32), form)
    onnx_export.set_metadata(
        model, fp32.metadata, quantization="int8", int8={"form": form.name, "verified_kernels": "avx512-vnni"}
    )
    batch = np.stack([fp32.preprocess(im) for im in _test_images(checkpoint.parent.parent, 16)])
    definition = load_embedder(model, reference=True).embed(batch)
    emulated, log = _embed_on_emulated_cpu(model, batch, tmp_path)
    measured = agreement(definition, emulated)
    print(f"\n{form.name} on emulated avx2 kernels against its definition: {measured}")
    assert (measured.mean_cosine >= MIN_FIDELITY) is sound, measured
    assert log.count("where its form saturates") == (0 if sound else 1), log


def _calibration_batch(checkpoint, embedder):
    """Images of the training classes, as `metrix export --quantize int8` calibrates."""
    train_classes = set(json.loads((checkpoint / "config.json").read_text())["data"]["train_classes"])
    paths = [p for p in _image_paths(checkpoint.parent.parent) if p.parent.name in train_classes]
    return verification_images(paths, embedder.metadata, CALIBRATION_IMAGES)


def test_an_int8_model_on_other_kernels_is_logged_once_by_every_reader(exported, tmp_path, caplog):
    """Verified on one kernel family, run on another: load_embedder (search, serve, Index.open,
    build-index) logs it once per model: a warning where the form saturates on this CPU, else a
    note; on its own kernels it is silent."""
    checkpoint, _ = exported
    here = int8_kernels()
    other = "avx2" if here != "avx2" else "avx512-vnni"
    metadata = read_metadata(checkpoint / "model.int8.onnx")
    models = {}
    for name, form in (("same", DEFAULT_FORM), ("default", DEFAULT_FORM), ("unsafe", UNSAFE_FORM)):
        models[name] = tmp_path / f"{name}.int8.onnx"
        shutil.copy(checkpoint / "model.int8.onnx", models[name])
        kernels = here if name == "same" else other
        onnx_export.set_metadata(
            models[name], metadata, int8={**metadata.int8, "form": form.name, "verified_kernels": kernels}
        )
    with caplog.at_level("INFO", logger="metrix.export"):
        for name in ("same", "default", "default", "unsafe", "unsafe"):
            load_embedder(models[name])
    logged = {Path(r.getMessage().split(": ")[0]).name: r for r in caplog.records}
    assert len(caplog.records) == 2 and set(logged) == {"default.int8.onnx", "unsafe.int8.onnx"}
    assert logged["default.int8.onnx"].levelname == "INFO"
    assert "computes the same on both" in logged["default.int8.onnx"].getMessage()
    unsafe = logged["unsafe.int8.onnx"]
    assert f"verified on {other} kernels, running on {here} kernels" in unsafe.getMessage()
    assert unsafe.levelname == ("WARNING" if UNSAFE_FORM.saturates_on(here) else "INFO")
    image = _image_paths(checkpoint.parent.parent)[0]
    index = tmp_path / "index"
    built = metrix_cli("build-index", image.parent, "--model", models["unsafe"], "--out", index, "--no-progress")
    searched = metrix_cli("search", image, "--index", index)
    for output in (built.stderr, searched.stderr):  # warnings reach the terminal; notes do not
        assert output.count("where its form saturates") == int(UNSAFE_FORM.saturates_on(here)), output


@pytest.mark.slow
def test_int8_losing_too_much_is_refused_and_fp32_stands(run, tmp_path):
    output = tmp_path / "m.onnx"
    result = metrix_cli("export", run, "-o", output, "--quantize", "int8", "--max-r1-drop", "-1000", check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "int8 loses" in line and "fp32" in line and "not written" in line
    assert output.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.slow
def test_parity_failure_fails_the_export_with_numbers(run, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "MIN_COSINE", 1.5)
    with pytest.raises(
        ExportError, match=r"disagrees with PyTorch \(batch 1: min cosine [01]\.\d+, max \|diff\| [\d.e-]+; batch 7"
    ):
        export_run(run, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_check_parity_sees_a_different_model(exported, run):
    checkpoint, _ = exported
    module = ImageEmbedder(build_model(load_checkpoint(run, checkpoint.name))).eval()
    with torch.no_grad():
        module.model.embedding_head.linear.weight.mul_(-1)
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    assert not any(p.ok for p in check_parity(module, checkpoint / "model.onnx", images))


@pytest.mark.slow
def test_bad_runs_fail_in_one_line_and_keep_what_is_stored(run, tmp_path):
    good = tmp_path / "keep.onnx"
    metrix_cli("export", run, "-o", good)
    before = good.read_bytes()
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    checkpoint = broken / "checkpoints" / (broken / "best").read_text()  # what an export takes by default
    cases = {
        "no checkpoint": (tmp_path / "empty", "has no latest checkpoint"),
        "corrupted weights": (broken, "is corrupted"),
    }
    (tmp_path / "empty").mkdir()
    weights = (checkpoint / "model.safetensors").read_bytes()
    (checkpoint / "model.safetensors").write_bytes(b"not a safetensors file")
    for name, (run_dir, reason) in cases.items():
        result = metrix_cli("export", run_dir, "-o", good, check=False)
        assert result.returncode == 2, name
        (line,) = result.stderr.strip().splitlines()
        assert reason in line, (name, line)
    (checkpoint / "model.safetensors").write_bytes(weights)
    config = json.loads((checkpoint / "config.json").read_text())
    config["model"]["backbone"] = "no_such_backbone"
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cannot be built"):
        export_run(broken, good)
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "empty", "keep.onnx"]


def test_loader_refuses_files_that_are_not_metrix_models(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("hello")
    with pytest.raises(ModelError, match="notes.onnx: onnxruntime cannot load it"):
        load_embedder(text)
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(
        torch.nn.Linear(3, 2).eval(), (torch.zeros(1, 3),), str(plain), dynamo=True, external_data=False, verbose=False
    )
    with pytest.raises(ModelError, match="plain.onnx: not a Metrix model"):
        load_embedder(plain)
    with pytest.raises(ModelError, match="no such model file"):
        load_embedder(tmp_path / "missing.onnx")


def test_serving_path_does_not_import_torch(exported, run):
    checkpoint, _ = exported
    image = _image_paths(run)[0]
    code = (
        "import sys; from metrix.export.runtime import load_embedder; from metrix.images import open_rgb; "
        f"e = load_embedder({str(checkpoint / 'model.onnx')!r}); v = e.embed_images([open_rgb({str(image)!r})]); "
        "assert v.shape == (1, 32), v.shape; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert result.stdout.strip() == "ok", result.stderr
