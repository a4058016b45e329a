"""Backbones behind a small registry (and any timm model as `timm:NAME`); each gives its last
features, their pooling and its preprocessing."""

from .registry import (
    TIMM_PREFIX,
    Backbone,
    BackboneError,
    Preprocessing,
    create_backbone,
    gap_gmp,
    list_backbones,
    local_weights,
    register_backbone,
)

__all__ = [
    "TIMM_PREFIX",
    "Backbone",
    "BackboneError",
    "Preprocessing",
    "create_backbone",
    "gap_gmp",
    "list_backbones",
    "local_weights",
    "register_backbone",
]
