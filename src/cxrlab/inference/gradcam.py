"""Class activation maps for every backbone in the registry, and the pointing game.

Four methods on one target layer's activations A (channels k, positions ij) and the gradients
g = d(class logit)/dA, all followed by ReLU, upsampling to the input size and per-image
scaling to [0, 1]:

- ``gradcam`` (Selvaraju et al. 2017): sum_k mean_ij(g_k) A_k. The classic; coarse at the
  last stage.
- ``gradcam++`` (Chattopadhay et al. 2018): channel weights from positive gradients weighted
  per position (their eq. 19), so several small regions of one class all count.
- ``hirescam`` (Draelos & Carin 2020): sum_k g_k * A_k element-wise; faithful to the model
  (on a last stage followed by global pooling it equals Grad-CAM).
- ``layercam`` (Jiang et al. 2021): sum_k ReLU(g_k) * A_k element-wise; made for earlier,
  finer layers.

The formulas follow pytorch-grad-cam (tests compare the two). cxrlab computes them itself with
``torch.autograd.grad`` on the target activations only: no parameter ``.grad`` is written, no
hook outlives the call, so concurrent requests of the HTTP service do not interfere.

Target layers: a backbone's stage by output stride, ``stride32`` (the last stage; alias
``last``), ``stride16`` (alias ``previous``), ``stride8``, or any module path.

The default is Grad-CAM++ on the stride-8 stage, not the classic Grad-CAM on the last stage:
``benchmarks/gradcam_pointing.py`` measured which layer and method point at the phantom's
lesions (docs/serving.md), and on every model that had learned the lesion (ResNet18 at 128 and
224 px, DenseNet121 at 128 px) the stride-8 map with position-wise weights hit the lesion 6-8
times as often as chance, the classic setting 0.2-3.5 times. ``last`` + ``gradcam`` is one
option away.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrlab.models.backbones import BACKBONES

METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")
ALIASES = {"last": "stride32", "previous": "stride16"}
# what predict.py, serve.py and the Predictor use unless told otherwise (see above)
DEFAULT_LAYER = "stride8"
DEFAULT_METHOD = "gradcam++"


def gradcam_layer(backbone: str, layer: str | None = None) -> str:
    """The module path a CAM reads: a stage by output stride (``stride32`` = ``last``;
    ``stride16`` = ``previous``; ``stride8``, the default) or any module path."""
    entry = BACKBONES[backbone]
    layer = layer or DEFAULT_LAYER
    name = ALIASES.get(layer, layer)
    if name.startswith("stride"):
        stride = name.removeprefix("stride")
        if stride.isdigit() and int(stride) in entry.cam_layers:
            return entry.cam_layers[int(stride)]
        raise ValueError(
            f"Grad-CAM layer {layer!r}: {backbone} has stages at "
            f"{', '.join(f'stride{s}' for s in sorted(entry.cam_layers))}"
        )
    return name


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"CAM method {method!r} is not known: use one of {', '.join(METHODS)}")
    return method


class GradCAM:
    def __init__(self, model, layer: str | None = None, method: str = DEFAULT_METHOD):
        self.model = model
        self.method = check_method(method)
        path = gradcam_layer(model.hparams["backbone"], layer)
        try:
            self.layer = model.net.get_submodule(path)
        except AttributeError as e:
            raise ValueError(
                f"Grad-CAM layer {path!r} is not a module of {model.hparams['backbone']}: use "
                "stride32 (last), stride16 (previous), stride8 or a module path such as features.6"
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
        cam = F.relu(_combine(self.method, acts.detach().float(), grads.float()))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        flat = cam.flatten(1)
        lo, hi = flat.min(1)[0][:, None, None], flat.max(1)[0][:, None, None]
        return ((cam - lo) / (hi - lo).clamp_min(1e-8)).cpu().numpy()


def _combine(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Activations and gradients (N, K, H, W) -> the unrectified map (N, 1, H, W)."""
    if method == "gradcam":
        return (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)
    if method == "hirescam":
        return (g * a).sum(1, keepdim=True)
    if method == "layercam":
        return (F.relu(g) * a).sum(1, keepdim=True)
    # gradcam++: alpha_ij = g^2 / (2 g^2 + sum_ab(A) g^3), zero where the gradient is
    g2 = g * g
    alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    weights = (F.relu(g) * alpha).sum(dim=(2, 3), keepdim=True)
    return (weights * a).sum(1, keepdim=True)


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
