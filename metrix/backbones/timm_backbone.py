"""Any timm model as a backbone: `timm:NAME`, with NAME a timm model name and, optionally, its
pretrained tag (`timm:convnext_tiny.fb_in22k`, `timm:vit_small_patch14_dinov2.lvd142m`).

- Preprocessing (input size, mean, std, crop fraction, interpolation) is the model's own
  pretrained config, as timm resolves it.
- Features: the output of timm's `forward_features`. For a CNN that is its last feature map,
  pooled by the paper's GAP + GMP like the built-in backbones. For a ViT it is the token sequence
  (prefix tokens such as CLS and registers included), pooled as the model's family does: timm's
  own `forward_head(pre_logits=True)`, i.e. the CLS token, the mean of the patch tokens or
  attention pooling. Metrix feature mixing mixes whole token sequences, prefix tokens included.
- Stages: the modules of `forward_features` in order, a stage ending at each module timm lists in
  `feature_info` (ResNet layers, ConvNeXt stages, ViT blocks); what follows the last one joins
  the last stage. A split is used only once it reproduces `forward_features` exactly; a model
  whose forward is not such a sequence (EVA's rotary embeddings) stays one stage.
- Weights (docs/backbones.md): `--weights FILE`, else the Hugging Face (or torch hub) cache,
  else a download when the hub is reachable; otherwise a one-line BackboneError saying what to do.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import safetensors
import torch
from torch import Tensor, nn

from .registry import Backbone, BackboneError, Preprocessing, gap_gmp

#: Children of a timm model that belong to its classifier head: the trunk stops at the first one.
_HEAD_CHILDREN = {"global_pool", "fc", "classifier", "head", "head_drop", "fc_norm", "attn_pool", "head_dist"}
#: Strong retrieval starting points (docs/backbones.md has their sizes and speeds).
RECOMMENDED = (
    "convnext_tiny.fb_in22k",
    "convnext_base.fb_in22k",
    "vit_small_patch14_dinov2.lvd142m",
    "vit_base_patch14_dinov2.lvd142m",
    "vit_base_patch16_clip_224.openai",
    "vit_base_patch16_siglip_224.webli",
    "efficientnet_b0.ra_in1k",
    "resnet50.a1_in1k",
)
#: Seconds to wait for the hub (or the proxy) to answer before saying it cannot be reached.
HUB_PROBE_TIMEOUT = 3.0


class TimmBackbone(Backbone):
    def __init__(self, name: str, pretrained: bool = True, image_size: int | None = None, weights: str | None = None):
        super().__init__()
        import timm

        self.name = name
        config = pretrained_config(name)
        options: dict = {"num_classes": 0}
        if image_size is not None and config.get("fixed_input_size"):
            options["img_size"] = image_size  # ViTs size their position embedding at creation
        file = weights_file(name, config, weights) if pretrained or weights else None
        try:
            if file is not None:
                # Handed over as a state dict without the classifier, so that timm (its key
                # conversions and position-embedding resampling included) loads it strictly.
                options["pretrained_cfg_overlay"] = {"state_dict": _trunk_state(file, config), "num_classes": 0}
            self.net = timm.create_model(name, pretrained=bool(pretrained or weights), **options)
        except (RuntimeError, KeyError, ValueError, OSError, safetensors.SafetensorError) as error:
            source = f"weights file {weights}" if weights else f"the pretrained weights of timm:{name}"
            raise BackboneError(
                f"{source} cannot be loaded into {name} ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
            ) from None
        self.net.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights
        data = timm.data.resolve_data_config(model=self.net)
        self.num_features = self.net.num_features
        self.channels_last_output = getattr(self.net, "output_fmt", "NCHW") == "NHWC"
        self.preprocessing = Preprocessing(
            data["input_size"][-1], tuple(data["mean"]), tuple(data["std"]), data["crop_pct"], data["interpolation"]
        )
        if image_size is not None:
            self.preprocessing = self.preprocessing.with_size(image_size)
        self._stages: list[nn.Module] | None = None

    def forward(self, images: Tensor) -> Tensor:
        return self.net.forward_features(images)

    def pool(self, features: Tensor) -> Tensor:
        if features.ndim == 3:  # tokens [B, N, C]: the family's own pooling
            return self.net.forward_head(features, pre_logits=True)
        if self.channels_last_output:  # Swin-style [B, H, W, C]
            features = features.permute(0, 3, 1, 2)
        return gap_gmp(features)

    def pool_cells(self, features: Tensor) -> Tensor:
        if features.ndim == 4:
            return super().pool_cells(features.permute(0, 3, 1, 2) if self.channels_last_output else features)
        # tokens: each patch token alone, as a sequence of copies of itself (prefix tokens included),
        # so that the CLS token, the patch mean and attention pooling all see only that patch
        prefix = getattr(self.net, "num_prefix_tokens", 0)
        patches = features[:, prefix:]
        b, n, c = patches.shape
        h, w = self.net.patch_embed.grid_size if hasattr(self.net, "patch_embed") else (1, n)
        if h * w != n:
            raise ValueError(f"timm:{self.name}: {n} patch tokens do not form its {h} x {w} grid")
        alone = patches.reshape(b * n, 1, c).expand(b * n, prefix + 1, c)
        return self.pool(alone).reshape(b, h, w, -1)

    def stages(self) -> list[nn.Module]:
        if self._stages is None:
            self._stages = _verified(self, split_into_stages(self.net))
        return self._stages


def weights_file(name: str, config: dict, weights: str | None) -> Path:
    """The file to load `name`'s pretrained weights from: the one given, a cached one, or one
    downloaded now. Raises a one-line BackboneError when none can be had."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"weights file {path} does not exist")
        return path
    if not (config.get("hf_hub_id") or config.get("url")):
        raise BackboneError(f"timm has no pretrained weights for {name}; pass --weights FILE or --no-pretrained")
    cached = cached_weights(config)
    if cached is not None:
        return cached
    advice = (
        f"on a machine with internet run `metrix backbones --download timm:{name}` and copy "
        f"{_hf_cache_dir()} here, or pass --weights FILE (safetensors or a timm checkpoint), or --no-pretrained"
    )
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise BackboneError(
            f"the weights of timm:{name} are not in the local cache and HF_HUB_OFFLINE is set; {advice}"
        )
    # huggingface_hub retries an unreachable hub for about 50 s: ask the network once, briefly, first.
    host = urlparse(
        urllib.request.getproxies().get("https") or (constants.ENDPOINT if config.get("hf_hub_id") else config["url"])
    )
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as error:
        raise BackboneError(
            f"the weights of timm:{name} are not in the local cache and {host.hostname} "
            f"cannot be reached ({error.strerror or error}); {advice}"
        ) from None
    return _download(name, config)


def _download(name: str, config: dict) -> Path:
    """Fetch the weights into the Hugging Face (or torch hub) cache the way timm does; returns the file."""
    try:
        if config.get("hf_hub_id"):
            from huggingface_hub import hf_hub_download

            repo, _, revision = config["hf_hub_id"].partition("@")
            names = _hub_filenames(config)
            for filename in names[:-1]:
                try:
                    return Path(hf_hub_download(repo, filename, revision=revision or None))
                except Exception as error:  # noqa: BLE001 - EntryNotFound: try the next name
                    if "EntryNotFound" not in type(error).__name__:
                        raise
            return Path(hf_hub_download(repo, names[-1], revision=revision or None))
        from torch.hub import download_url_to_file

        target = _torch_hub_file(config["url"])
        target.parent.mkdir(parents=True, exist_ok=True)
        download_url_to_file(config["url"], str(target), progress=False)
        return target
    except Exception as error:  # noqa: BLE001 - network and hub errors of every kind
        raise BackboneError(
            f"could not download the weights of timm:{name} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:160] if str(error) else ''}); pass --weights FILE "
            f"or --no-pretrained"
        ) from None


def cached_weights(config: dict) -> Path | None:
    """The weights file of a pretrained config if it is already on this machine."""
    if config.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = config["hf_hub_id"].partition("@")
        for filename in _hub_filenames(config):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    if config.get("url") and _torch_hub_file(config["url"]).is_file():
        return _torch_hub_file(config["url"])
    return None


def _trunk_state(file: Path, config: dict) -> dict[str, Tensor]:
    from timm.models import load_state_dict

    heads = config.get("classifier") or ()
    heads = {
        f"{head}.{part}" for head in ((heads,) if isinstance(heads, str) else heads) for part in ("weight", "bias")
    }
    return {k: v for k, v in load_state_dict(str(file)).items() if k not in heads}


def _hub_filenames(config: dict) -> list[str]:
    # timm's order: a safetensors file where one exists, then the named (or default) .bin.
    filename = config.get("hf_hub_filename") or "pytorch_model.bin"
    safe = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    alternative = safe.get(filename, filename[:-4] + ".safetensors" if filename.endswith(".bin") else None)
    return [name for name in (alternative, filename) if name]


def _torch_hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def cached_timm_models() -> tuple[str, list[str]]:
    """The Hugging Face cache folder and the timm models whose weights it holds."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        repos = scan_cache_dir().repos
    except CacheNotFound:
        repos = []
    return _hf_cache_dir(), sorted(r.repo_id.removeprefix("timm/") for r in repos if r.repo_id.startswith("timm/"))


def pretrained_config(name: str) -> dict:
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise BackboneError(f"timm has no model {name!r}; `metrix backbones --search PATTERN` lists the names")
    try:
        config = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as error:  # an unknown pretrained tag
        raise BackboneError(f"timm:{name}: {str(error).splitlines()[0]}") from None
    return config.to_dict() if config is not None else {}


class _TokenEmbedding(nn.Module):
    """A VisionTransformer's first steps: patches, prefix tokens and position embedding, then the
    pre-norm. Its parameters are registered here too, so the stage cache hashes them."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.patch_embed, self.patch_drop, self.norm_pre = net.patch_embed, net.patch_drop, net.norm_pre
        for name in ("cls_token", "reg_token", "pos_embed"):
            if isinstance(getattr(net, name, None), nn.Parameter):
                setattr(self, name, getattr(net, name))
        object.__setattr__(self, "_pos_embed", net._pos_embed)  # a bound method, not a child

    def forward(self, x: Tensor) -> Tensor:
        return self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))


def split_into_stages(net: nn.Module) -> list[nn.Module]:
    """The modules of `net.forward_features` in order, grouped so that a stage ends at each
    feature_info module; unverified (see TimmBackbone.stages)."""
    from timm.models.vision_transformer import VisionTransformer

    feature_modules = [info["module"] for info in getattr(net, "feature_info", [])]
    containers = {m.split(".")[0] for m in feature_modules if "." in m}
    units: list[tuple[str, nn.Module]] = []
    for name, child in net.named_children():
        if name in _HEAD_CHILDREN:
            break
        if name in containers:
            units += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            units.append((name, child))
    if isinstance(net, VisionTransformer):
        first_block = next(i for i, (name, _) in enumerate(units) if name.startswith("blocks."))
        units = [("embedding", _TokenEmbedding(net))] + units[first_block:]
    stages, current = [], []
    for name, module in units:
        current.append(module)
        if name in feature_modules:
            stages.append(current)
            current = []
    if current:
        if stages:
            stages[-1] += current
        else:
            stages.append(current)
    return [group[0] if len(group) == 1 else nn.Sequential(*group) for group in stages]


class _WholeTrunk(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)


@torch.no_grad()
def _verified(backbone: TimmBackbone, stages: list[nn.Module]) -> list[nn.Module]:
    """`stages` if running them in turn gives forward_features' output on a random image, else one
    stage that is the whole trunk."""
    was_training = backbone.training
    backbone.eval()
    size = backbone.preprocessing.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(next(backbone.parameters()).device)
    try:
        expected = backbone(x)
        for stage in stages:
            x = stage(x)
        same = x.shape == expected.shape and torch.allclose(x, expected, rtol=1e-4, atol=1e-5)
    except (RuntimeError, TypeError, ValueError, AttributeError):
        same = False
    backbone.train(was_training)
    return stages if same else [_WholeTrunk(backbone.net)]
