"""`metrix export --quantize int8`: static int8 quantisation of an exported model with
onnxruntime (QDQ, per-channel int8 weights, uint8 activations: the U8S8 form onnxruntime runs
fastest on x86), calibrated on images of the *training* classes, then measured: R@1 of the fp32
and the int8 model on the run's evaluation split, both through onnxruntime with the same
preprocessing."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

CALIBRATION_IMAGES = 128


def quantize_int8(fp32_model: Path, output: Path, calibration: np.ndarray) -> None:
    """calibration: uint8 [N, S, S, 3] images the activation ranges are measured on."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

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
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def recall_at_1(query, query_labels, gallery=None, gallery_labels=None) -> float:
    from metrix.evaluation.metrics import evaluate_retrieval

    return evaluate_retrieval(query, query_labels, gallery, gallery_labels, ks=(1,), nmi=False).recall_at[1]


def quantize_run(fp32_model: Path, data, output: Path | None = None, max_r1_drop: float = 1.0) -> dict:
    """Quantise an exported model, calibrated on `data.train` and measured on `data.test`
    (against `data.gallery` where the data has one). The int8 file is renamed into place only if
    it loses at most `max_r1_drop` points of R@1; either way the report holds both figures."""
    from metrix.files import staged

    from .onnx_export import ExportError, set_metadata, verification_images
    from .runtime import embed_files, load_embedder, read_metadata

    output = output or fp32_model.with_name(f"{fp32_model.stem}.int8.onnx")
    metadata = read_metadata(fp32_model)
    with staged(output) as tmp:
        quantize_int8(
            fp32_model, tmp, verification_images([s.path for s in data.train.samples], metadata, CALIBRATION_IMAGES)
        )
        set_metadata(tmp, metadata, quantization="int8")
        report = {
            "model": str(output),
            "data": f"{data.name} data at {data.root}",
            "split": "test",
            "num_queries": len(data.test),
        }
        for name, path in (("fp32", fp32_model), ("int8", tmp)):
            embedder = load_embedder(path)
            query = embed_files(embedder, [s.path for s in data.test.samples])
            gallery = (
                embed_files(embedder, [s.path for s in data.gallery.samples]) if data.gallery is not None else None
            )
            report[f"recall_at_1_{name}"] = recall_at_1(
                query, np.array(data.test.labels), gallery, None if gallery is None else np.array(data.gallery.labels)
            )
        report["recall_at_1_change"] = report["recall_at_1_int8"] - report["recall_at_1_fp32"]
        if -report["recall_at_1_change"] > max_r1_drop:
            raise ExportError(
                f"{output}: int8 loses {-report['recall_at_1_change']:.2f} R@1 on the {data.name} test split "
                f"(fp32 {report['recall_at_1_fp32']:.2f}, int8 {report['recall_at_1_int8']:.2f}; limit {max_r1_drop}); "
                "not written, the fp32 model stands"
            )
    return report
