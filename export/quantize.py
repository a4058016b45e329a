"""`metrix export --quantize int8`: static int8 quantisation of an exported model with onnxruntime
(QDQ), calibrated on images of the *training* classes, then measured on the run's evaluation split
against the fp32 model (both through onnxruntime with the same preprocessing): R@1 of each, the
cosine of each image's two embeddings, how many of each image's fp32 neighbours int8 keeps, and
the speed of each. The model records its form and the CPU kernels it was verified on
(export/cpu_kernels.py).

The default form is U8S8 with 7-bit weights (`reduce_range`), per channel: on CPUs without VNNI
onnxruntime multiplies u8 activations by s8 weights with `vpmaddubsw`, whose 16-bit pair sums
saturate when both are large; 7-bit weights halve the largest sum, so it cannot. docs/export.md
has the measured table of forms x kernels (bench/int8_forms.py) that chose it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("metrix.export")
CALIBRATION_IMAGES = 128
#: Neighbours per image that the agreement check compares (fewer where the set is smaller).
NEIGHBOURS = 5


@dataclass(frozen=True)
class Int8Form:
    """One way to quantise: activation and weight types, per-channel or per-tensor weight scales,
    and 7-bit weights (`reduce_range`)."""

    activations: str  # "u8" or "s8"
    weights: str  # "s8" or "u8"
    per_channel: bool = True
    reduce_range: bool = False

    @property
    def name(self) -> str:
        return (
            f"{self.activations}{self.weights}"
            + ("-7bit" if self.reduce_range else "")
            + ("-per-channel" if self.per_channel else "-per-tensor")
        )

    @classmethod
    def parse(cls, name: str) -> "Int8Form":
        types, *rest = name.split("-", 1)
        if len(types) != 4 or types[:2] not in ("u8", "s8") or types[2:] not in ("u8", "s8") or not rest:
            raise ValueError(f"{name!r} is not an int8 form (e.g. {DEFAULT_FORM.name})")
        detail = rest[0]
        if detail not in ("per-channel", "per-tensor", "7bit-per-channel", "7bit-per-tensor"):
            raise ValueError(f"{name!r} is not an int8 form (e.g. {DEFAULT_FORM.name})")
        return cls(types[:2], types[2:], detail.endswith("per-channel"), detail.startswith("7bit"))

    def saturates_on(self, kernels: str) -> bool:
        """Whether u8 x s8 pair sums can overflow 16 bits on these kernels (export/cpu_kernels.py)."""
        from .cpu_kernels import EXACT_U8S8

        return self.weights == "s8" and not self.reduce_range and kernels not in EXACT_U8S8


DEFAULT_FORM = Int8Form("u8", "s8", per_channel=True, reduce_range=True)
#: What `metrix export --quantize int8` wrote before the kernels were measured: saturates without VNNI.
UNSAFE_FORM = Int8Form("u8", "s8", per_channel=True, reduce_range=False)


def quantize_int8(fp32_model: Path, output: Path, calibration: np.ndarray, form: Int8Form = DEFAULT_FORM) -> None:
    """calibration: uint8 [N, S, S, 3] images the activation ranges are measured on."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i : i + 16] for i in range(0, len(calibration), 16))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Symbolic shape inference cannot follow the dynamo graph's shapes; onnx's own inference does.
        quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(output),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=form.per_channel,
            reduce_range=form.reduce_range,
            activation_type=types[form.activations],
            weight_type=types[form.weights],
        )


@dataclass(frozen=True)
class Agreement:
    """How close two sets of embeddings of the same images are."""

    mean_cosine: float
    min_cosine: float
    neighbours: float  # share of each image's nearest neighbours (within the set) that the other keeps

    def __str__(self) -> str:
        return (
            f"cosine mean {self.mean_cosine:.4f} (min {self.min_cosine:.4f}), "
            f"{100 * self.neighbours:.1f}% of neighbours kept"
        )


#: The int8 kernels of a CPU against the model's own definition (its QDQ graph evaluated in
#: float), mean cosine: 0.994-0.999 for every per-channel form on kernels that do not saturate,
#: and on any kernels for the default form; 0.89-0.93 for u8 x s8 with 8-bit weights on AVX2
#: (docs/export.md: the test model and the Lite0 floor). Unlike the distance to fp32, it hardly
#: depends on the model.
MIN_FIDELITY = 0.98


def agreement(fp32: np.ndarray, int8: np.ndarray, k: int = NEIGHBOURS) -> Agreement:
    """fp32, int8: L2-normalised embeddings [N, D] of the same N images (N >= 2)."""
    cosine = (fp32 * int8).sum(1)
    k = min(k, len(fp32) - 1)
    kept = []
    for vectors in (fp32, int8):
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        kept.append(np.argsort(-similarity, axis=1, kind="stable")[:, :k])
    shared = [len(set(a) & set(b)) for a, b in zip(*kept)]
    return Agreement(float(cosine.mean()), float(cosine.min()), float(np.mean(shared) / k))


def ms_per_image(embedder, batch: np.ndarray, rounds: int = 3) -> float:
    """Median over `rounds` of one batch's time, per image (after one warm-up run)."""
    embedder.embed(batch)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        embedder.embed(batch)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / len(batch)


def kernel_fidelity(model: Path, images: np.ndarray) -> Agreement:
    """This CPU's int8 kernels against the int8 model's definition, on the same uint8 images."""
    from .runtime import load_embedder

    return agreement(load_embedder(model, reference=True).embed(images), load_embedder(model).embed(images))


def recall_at_1(query, query_labels, gallery=None, gallery_labels=None) -> float:
    from metrix.evaluation.metrics import evaluate_retrieval

    return evaluate_retrieval(query, query_labels, gallery, gallery_labels, ks=(1,), nmi=False).recall_at[1]


def quantize_run(
    fp32_model: Path, data, output: Path | None = None, max_r1_drop: float = 1.0, form: Int8Form = DEFAULT_FORM
) -> dict:
    """Quantise an exported model, calibrated on `data.train` and measured on `data.test`
    (against `data.gallery` where the data has one). The int8 file is renamed into place only if
    it loses at most `max_r1_drop` points of R@1; either way the report holds both figures."""
    from metrix.files import staged

    from .cpu_kernels import int8_kernels
    from .onnx_export import ExportError, set_metadata, verification_images
    from .runtime import embed_files, load_embedder, read_metadata

    output = output or fp32_model.with_name(f"{fp32_model.stem}.int8.onnx")
    metadata = read_metadata(fp32_model)
    with staged(output) as tmp:
        quantize_int8(
            fp32_model,
            tmp,
            verification_images([s.path for s in data.train.samples], metadata, CALIBRATION_IMAGES),
            form,
        )
        # verified here and now: a failed check leaves no file behind
        set_metadata(tmp, metadata, quantization="int8", int8={"form": form.name, "verified_kernels": int8_kernels()})
        report = {
            "model": str(output),
            "data": f"{data.name} data at {data.root}",
            "split": "test",
            "num_queries": len(data.test),
            "form": form.name,
            "kernels": int8_kernels(),
        }
        timing_batch = verification_images([s.path for s in data.test.samples], metadata, 16)
        embedded = {}
        for name, path in (("fp32", fp32_model), ("int8", tmp)):
            embedder = load_embedder(path)
            embedded[name] = query = embed_files(embedder, [s.path for s in data.test.samples])
            gallery = (
                embed_files(embedder, [s.path for s in data.gallery.samples]) if data.gallery is not None else None
            )
            report[f"recall_at_1_{name}"] = recall_at_1(
                query, np.array(data.test.labels), gallery, None if gallery is None else np.array(data.gallery.labels)
            )
            report[f"ms_per_image_{name}"] = ms_per_image(embedder, timing_batch)
        report["recall_at_1_change"] = report["recall_at_1_int8"] - report["recall_at_1_fp32"]
        report["agreement"] = agreement(embedded["fp32"], embedded["int8"])
        report["fidelity"] = kernel_fidelity(tmp, timing_batch)
        if report["fidelity"].mean_cosine < MIN_FIDELITY:
            raise ExportError(
                f"{output}: int8 form {form.name} is not what it computes on this CPU's {report['kernels']} "
                f"kernels (cosine to its own definition {report['fidelity'].mean_cosine:.4f} < {MIN_FIDELITY}: "
                f"they saturate); not written, the fp32 model stands; use --int8-form {DEFAULT_FORM.name}"
            )
        if -report["recall_at_1_change"] > max_r1_drop:
            raise ExportError(
                f"{output}: int8 loses {-report['recall_at_1_change']:.2f} R@1 on the {data.name} test split "
                f"(fp32 {report['recall_at_1_fp32']:.2f}, int8 {report['recall_at_1_int8']:.2f}; limit {max_r1_drop}); "
                "not written, the fp32 model stands"
            )
        set_metadata(tmp, metadata, quantization="int8", int8=int8_record(report))
    return report


def int8_record(report: dict) -> dict:
    """What the int8 model says about its own check (ONNX metadata `metrix.int8`)."""
    from metrix.machine import cpu_name

    measured = report["agreement"]
    return {
        "form": report["form"],
        "verified_kernels": report["kernels"],
        "verified_cpu": cpu_name(),
        "kernel_fidelity": round(report["fidelity"].mean_cosine, 5),
        "mean_cosine": round(measured.mean_cosine, 4),
        "min_cosine": round(measured.min_cosine, 4),
        "neighbours_kept": round(measured.neighbours, 4),
        "recall_at_1_change": round(report["recall_at_1_change"], 2),
        "speedup": round(report["ms_per_image_fp32"] / report["ms_per_image_int8"], 2),
        "data": f"{report['data']}, {report['split']} split, {report['num_queries']} queries",
    }


_logged: set[tuple[str, str]] = set()


def warn_if_unverified(path: Path | str, metadata) -> None:
    """Log once per model and kernel family when an int8 model runs on other int8 kernels than it
    was verified on: a warning where its form saturates on these kernels, else a note."""
    from .cpu_kernels import int8_kernels

    if metadata.quantization != "int8":
        return
    record, here = metadata.int8 or {}, int8_kernels()
    verified = record.get("verified_kernels")
    if verified == here or (str(path), here) in _logged:
        return
    _logged.add((str(path), here))
    form = Int8Form.parse(record["form"]) if "form" in record else UNSAFE_FORM  # exported before forms were recorded
    where = f"verified on {verified} kernels" if verified else "never verified on any kernels"
    if form.saturates_on(here):
        log.warning(
            "%s: int8 model (%s) %s, running on %s kernels here, where its form saturates: its neighbours "
            "differ from what its export measured; re-export it with `metrix export RUN --quantize int8` "
            "(form %s gives the same answers on every x86 CPU) or serve the fp32 model",
            path,
            form.name,
            where,
            here,
            DEFAULT_FORM.name,
        )
    else:
        log.info(
            "%s: int8 model (%s) %s, running on %s kernels: its form computes the same on both",
            path,
            form.name,
            where,
            here,
        )
