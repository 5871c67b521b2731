"""Grad-CAM (Selvaraju et al. 2017) for every backbone in the registry, and the pointing game.

The target layer is the backbone's last convolutional stage, named in the registry
(``BackboneEntry.gradcam_layer``: DenseNet ``features.denseblock4``, ResNet ``layer4``,
EfficientNet the last feature stage). The heatmap is ReLU(sum_k w_k A_k) with w_k the spatial
mean of d(class logit)/dA_k, upsampled to the input size and scaled to [0, 1] per image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrlab.models.backbones import BACKBONES


def gradcam_layer(backbone: str, layer: str | None = None) -> str:
    """The module path Grad-CAM reads: the registry's last stage (``None`` or ``"last"``),
    the stage before it (``"previous"``: twice the resolution), or any module path."""
    entry = BACKBONES[backbone]
    if layer in (None, "last"):
        return entry.gradcam_layer
    if layer == "previous":
        return entry.blocks[-2][-1]
    return layer


class GradCAM:
    def __init__(self, model, layer: str | None = None):
        self.model = model
        path = gradcam_layer(model.hparams["backbone"], layer)
        try:
            self.layer = model.net.get_submodule(path)
        except AttributeError as e:
            raise ValueError(
                f"Grad-CAM layer {path!r} is not a module of {model.hparams['backbone']}: use "
                "last, previous or a module path such as features.6"
            ) from e

    def __call__(self, x: torch.Tensor, class_idx: int | list[int] | torch.Tensor) -> np.ndarray:
        """Network input (N, C, S, S) -> heatmaps (N, S, S) in [0, 1] for ``class_idx``."""
        store = {}
        handle = self.layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                x = x.detach().clone().requires_grad_(True)  # grads flow even if all is frozen
                logits = self.model.net(x)
                idx = torch.as_tensor(class_idx, device=logits.device).reshape(-1)
                if idx.numel() == 1:
                    idx = idx.expand(len(logits))
                target = logits.gather(1, idx[:, None].long()).sum()
                acts = store["a"]
                grads = torch.autograd.grad(target, acts)[0]
        finally:
            handle.remove()
            self.model.train(was_training)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * acts).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        flat = cam.flatten(1)
        lo, hi = flat.min(1)[0][:, None, None], flat.max(1)[0][:, None, None]
        return ((cam - lo) / (hi - lo).clamp_min(1e-8)).detach().cpu().numpy()


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 grayscale (S, S) + heatmap [0, 1] (S, S) -> RGB uint8 overlay (jet colormap)."""
    from matplotlib import colormaps

    base = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=2)
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    out = (1 - alpha) * base + alpha * colour
    return (out * 255).round().astype(np.uint8)


def pointing_hits(heatmaps: np.ndarray, masks: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """Pointing game (Zhang et al. 2016): is each heatmap's maximum inside its mask?

    ``tolerance`` pixels: a hit if the mask is within that distance of the maximum.
    """
    hits = []
    for heat, mask in zip(heatmaps, masks):
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        y0, y1 = max(0, y - tolerance), y + tolerance + 1
        x0, x1 = max(0, x - tolerance), x + tolerance + 1
        hits.append(bool(mask[y0:y1, x0:x1].any()))
    return np.array(hits)
