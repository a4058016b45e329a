"""A model -> one self-contained ONNX file that embeds images (`metrix export`; a trained run's
checkpoint comes through metrix/cli/run_export.py).

The graph takes uint8 RGB images, NHWC, at the model's input size, with a dynamic batch axis:
what a decoder hands over (a PIL image as a numpy array is HWC uint8), a quarter of the bytes of
float32, and no normalisation left for a client to get wrong. Inside: cast, (x/255 - mean)/std,
NHWC -> NCHW, the backbone, the head and the final L2 normalisation. A second output, `cells`,
embeds each location of the last feature map alone ([B, h, w, D], L2-normalised): what "why
this match" (export/explain.py) compares with another picture's embedding.

Exporter: torch.onnx's dynamo exporter (torch.export), opset 20, weights inside the file. Every
export is verified before it is renamed into place: onnx.checker (full check), then PyTorch vs
onnxruntime on the same images at batch 1 and batch 7 (cosine >= 0.99999 per row, max abs
difference <= 1e-4), for both outputs; a mismatch fails the export with the measured numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from metrix import __version__
from metrix.files import staged

from .runtime import CELLS_NAME, INPUT_NAME, OUTPUT_NAME, ModelMetadata, load_embedder, load_for_model

OPSET = 20
MIN_COSINE, MAX_ABS_DIFF = 0.99999, 1e-4
PARITY_BATCHES = (1, 7)


class ExportError(ValueError):
    """An export that failed or did not verify; the message is one line with the numbers."""


class ImageEmbedder(nn.Module):
    """uint8 [B, S, S, 3] RGB -> (L2-normalised embeddings [B, D], cell embeddings [B, h, w, D]):
    the model with its input normalisation folded in (x * scale + shift == (x/255 - mean) / std)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
        std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.with_cells(images.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.shift)


@dataclass
class Parity:
    batch: int
    min_cosine: float
    max_abs_diff: float
    output: str = OUTPUT_NAME

    @property
    def ok(self) -> bool:
        return self.min_cosine >= MIN_COSINE and self.max_abs_diff <= MAX_ABS_DIFF

    def __str__(self) -> str:
        what = "" if self.output == OUTPUT_NAME else f"{self.output} at "
        return f"{what}batch {self.batch}: min cosine {self.min_cosine:.7f}, max |diff| {self.max_abs_diff:.2e}"


def to_onnx(module: ImageEmbedder, metadata: ModelMetadata):
    """The traced graph as an onnx ModelProto with the metadata attached."""
    import warnings

    example = torch.zeros(2, metadata.image_size, metadata.image_size, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, CELLS_NAME],
            dynamic_shapes={"images": {0: batch}},
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    proto.producer_name, proto.producer_version = "metrix", __version__
    proto.doc_string = (
        f"Metrix image embedder: {metadata.input_layout} [B, {metadata.image_size}, "
        f"{metadata.image_size}, 3] -> L2-normalised float32 [B, {metadata.embedding_size}]"
    )
    _attach(proto, metadata)
    return proto


def _attach(proto, metadata: ModelMetadata) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def set_metadata(path: Path, metadata: ModelMetadata, **changes) -> None:
    """Rewrite a model file's Metrix metadata (the quantiser does not carry it over)."""
    import onnx

    proto = onnx.load(str(path))
    _attach(proto, replace(metadata, **changes))
    onnx.save_model(proto, str(path))


def check_parity(module: ImageEmbedder, onnx_path: Path, images: np.ndarray) -> list[Parity]:
    """PyTorch vs onnxruntime on the same uint8 images, at each batch size of PARITY_BATCHES, for
    the embeddings and then for the cell embeddings (each cell's vector compared alone)."""
    embedder = load_embedder(onnx_path)
    results = {OUTPUT_NAME: [], CELLS_NAME: []}
    for batch in PARITY_BATCHES:
        chunk = images[:batch]
        with torch.no_grad():
            expected = [t.numpy() for t in module(torch.from_numpy(chunk))]
        got = embedder.embed_with_cells(chunk)
        for name, want, have in zip(results, expected, got):
            want, have = want.reshape(-1, want.shape[-1]), have.reshape(-1, have.shape[-1])
            cosine = (want * have).sum(1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(have, axis=1))
            results[name].append(Parity(batch, float(cosine.min()), float(np.abs(want - have).max()), name))
    return results[OUTPUT_NAME] + results[CELLS_NAME]


def verification_images(paths: list[Path], metadata: ModelMetadata, count: int = max(PARITY_BATCHES)) -> np.ndarray:
    """`count` images spread over `paths`, loaded as clients load them; seeded noise where too few
    (or no) paths are given, so an export verifies even without its training data."""
    from metrix.images import ImageDecodeError

    chosen = [paths[i * len(paths) // count] for i in range(count)] if len(paths) >= count else list(paths)
    arrays = []
    for path in chosen:
        try:
            arrays.append(load_for_model(path, metadata)[0])
        except ImageDecodeError:
            continue
    rng = np.random.default_rng(0)
    size = metadata.image_size
    while len(arrays) < count:
        arrays.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return np.stack(arrays)


def save_checked(proto, path: Path, name: Path) -> None:
    """Write the model and run onnx.checker's full check on the file (`name` is for the error)."""
    import onnx

    onnx.save_model(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{name}: onnx.checker rejects the exported graph ({str(error).splitlines()[0]})") from None


def export_backbone(
    name: str,
    output: Path,
    image_size: int | None = None,
    pretrained: bool = True,
    weights: str | None = None,
    sample_paths: list[Path] = (),
) -> tuple[ModelMetadata, list[Parity]]:
    """A backbone with no training (its pooled features, L2-normalised: the floor), exported and
    verified like a trained run."""
    from metrix.backbones import create_backbone
    from metrix.model import PooledBackbone

    model = PooledBackbone(create_backbone(name, pretrained, image_size, weights)).eval()
    pre = model.preprocessing
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    metadata = ModelMetadata(
        image_size=pre.image_size,
        resize_size=pre.resize_size,
        interpolation=pre.interpolation,
        embedding_size=model.embedding_size,
        backbone=name,
        loss="none",
        mixup="none",
        labels="",
        training_data="none (pretrained)" if pretrained or weights else "none (random weights)",
        train_classes=0,
        weights_sha256=digest.hexdigest(),
        metrix_version=__version__,
        exporter=f"torch.onnx dynamo (torch {torch.__version__})",
        opset=OPSET,
    )
    return export_verified(ImageEmbedder(model).eval(), metadata, output, list(sample_paths))


def export_verified(
    module: ImageEmbedder, metadata: ModelMetadata, output: Path, sample_paths: list[Path]
) -> tuple[ModelMetadata, list[Parity]]:
    """Trace, check and verify `module`; the file appears at `output` only if all passed."""
    with staged(output) as tmp:
        save_checked(to_onnx(module, metadata), tmp, output)
        parity = check_parity(module, tmp, verification_images(sample_paths, metadata))
        failed = [p for p in parity if not p.ok]
        if failed:
            raise ExportError(
                f"{output}: onnxruntime disagrees with PyTorch ({'; '.join(map(str, failed))}; "
                f"need cosine >= {MIN_COSINE} and |diff| <= {MAX_ABS_DIFF})"
            )
    return metadata, parity
