"""The TMBRB network: a 3D DenseNet (MONAI) with four dense blocks giving 1020 features, then 1020 -> 128 -> 2.

A bundle names its network in ``architecture.name``; ``ARCHITECTURES`` maps that name to the class, so a second
network is one new entry there (its constructor takes the other keys of the ``architecture`` section as keyword
arguments, and it maps a (B, 1, z, y, x) crop to (B, 2) logits). A section without a name means
``DEFAULT_ARCHITECTURE``: the only network there was before names were looked up.

>>> sorted(ARCHITECTURES)
['TMBRBNet (MONAI DenseNet, 3D)']
>>> architecture_class(DEFAULT_ARCHITECTURE).__name__
'TMBRBNet'
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn
from monai.networks.nets import DenseNet

PAPER_FEATURES = 1020


class TMBRBNet(DenseNet):
    """MONAI DenseNet feature extractor with the paper's fully connected classifier.

    With init_features=32, growth_rate=32 and block_config=(6, 12, 24, 16) the feature vector is exactly 1020 long
    (32 -> 224/112 -> 496/248 -> 1016/508 -> 1020). Output: logits for (Low-TMB, High-TMB).
    """

    def __init__(self, *, init_features: int = 32, growth_rate: int = 32,
                 block_config: Sequence[int] = (6, 12, 24, 16), bn_size: int = 2, hidden_features: int = 128,
                 dropout_prob: float = 0.0, classifier_dropout: float = 0.0, num_classes: int = 2,
                 in_channels: int = 1, spatial_dims: int = 3):
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                         init_features=init_features, growth_rate=growth_rate, block_config=tuple(block_config),
                         bn_size=bn_size, dropout_prob=dropout_prob)
        n_features = self.class_layers.out.in_features
        self.n_features = n_features
        self.class_layers.out = nn.Sequential(
            nn.Linear(n_features, hidden_features), nn.ReLU(), nn.Dropout(classifier_dropout),
            nn.Linear(hidden_features, num_classes))

    def deep_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled deep-feature vector (1020 long for the paper's configuration)."""
        h = self.features(x)
        for name in ("relu", "pool", "flatten"):
            h = getattr(self.class_layers, name)(h)
        return h


def deep_feature_layer(net: nn.Module) -> Optional[nn.Module]:
    """The layer whose output is the pooled deep-feature vector (``class_layers.flatten`` of a TMBRBNet), or None
    for a network that has no such layer."""
    layers = getattr(net, "class_layers", None)
    return getattr(layers, "flatten", None) if layers is not None else None


@contextmanager
def capture_deep_features(net: nn.Module, layer: Optional[str] = None) -> Iterator[Optional[List[torch.Tensor]]]:
    """Collect the deep features of every forward pass of ``net`` made inside the block.

    Parameters
    ----------
    net : torch.nn.Module
        The network (e.g. ``Bundle.model(device)``).
    layer : str, optional
        A layer name (``net.named_modules()``) whose output, averaged over its spatial axes, is the feature vector;
        None means the pooled deep features (:func:`deep_feature_layer`).

    Yields
    ------
    list of torch.Tensor or None
        One detached (B, n_features) tensor per forward pass, filled as the passes run; None when the network has
        no such layer.

    Examples
    --------
    >>> net = TMBRBNet(block_config=(1, 1, 1, 1), init_features=4, growth_rate=4).eval()
    >>> with capture_deep_features(net) as feats, torch.no_grad():
    ...     logits = net(torch.zeros(2, 1, 32, 32, 32))
    >>> len(feats), tuple(feats[0].shape) == (2, net.n_features)
    (1, True)
    """
    module = deep_feature_layer(net) if layer is None else dict(net.named_modules()).get(layer)
    if module is None:
        yield None
        return
    store: List[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda _m, _i, out: store.append(out.detach().flatten(2).mean(2) if out.ndim > 2 else out.detach()))
    try:
        yield store
    finally:
        handle.remove()


DEFAULT_ARCHITECTURE = "TMBRBNet (MONAI DenseNet, 3D)"

# The networks a bundle's ``architecture.name`` may name (the names are in existing bundles: keep them).
ARCHITECTURES: Dict[str, Callable[..., nn.Module]] = {DEFAULT_ARCHITECTURE: TMBRBNet}


def architecture_class(name: str) -> Callable[..., nn.Module]:
    """The class registered as ``name`` in ARCHITECTURES; ValueError naming the known ones when there is none."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(k) for k in ARCHITECTURES)
        raise ValueError(f"the architecture {name!r} is not known to this TMBRB (it knows {known})") from None


def build_model(architecture: dict) -> nn.Module:
    """Build the network from a bundle's architecture config: ``name`` (a key of ARCHITECTURES, absent means
    DEFAULT_ARCHITECTURE), optional ``n_features`` (checked), the rest the network's keyword arguments."""
    cfg = dict(architecture)
    cls = architecture_class(cfg.pop("name", DEFAULT_ARCHITECTURE))
    expected = cfg.pop("n_features", None)
    net = cls(**cfg)
    if expected is not None and getattr(net, "n_features", None) != expected:
        raise ValueError(f"architecture gives {getattr(net, 'n_features', None)} features, metadata says {expected}")
    return net


def select_device(device: str = "auto") -> torch.device:
    """'auto' takes CUDA (then Apple MPS) when available, else the CPU."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device(device)
