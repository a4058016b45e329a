"""Backbones behind a small registry; each gives its last feature map and its preprocessing."""

from .registry import Backbone, BackboneError, Preprocessing, create_backbone, list_backbones, register_backbone

__all__ = ["Backbone", "BackboneError", "Preprocessing", "create_backbone", "list_backbones", "register_backbone"]
