"""SimilarityModel: a torch model plus a selection of its layers whose outputs can be captured.

A :class:`SimilarityModel` wraps an ``nn.Module``, resolves a *layer selection* to qualified module
names (``"layer1.0"``), and captures the outputs of those modules for one batch with
:meth:`SimilarityModel.capture`. It is the only place in the package that touches hooks.

Layer selection
---------------
``layers_to_include`` is a list whose items may be

* an exact qualified module name, as listed by :meth:`SimilarityModel.available_layers`
  (``"layer1.0"``, ``"fc"``);
* a glob pattern matched with :func:`fnmatch.fnmatchcase` against the qualified names
  (``"layer*.?.conv1"``; ``*``, ``?`` and ``[...]`` are the wildcards, ``*`` also crosses dots);
* a module class (``torch.nn.Conv2d``): every module that is an instance of it;
* a module object of the model: that module.

A single item is accepted in place of a one-item list. The union is de-duplicated and put in the
model's order (see *Order* below). An item that matches nothing raises :class:`ValueError` naming
the item, the model and the closest real names. An empty list is an error.

*Strict* and *broad* selections. A layer named exactly (or given as a module object) is strict:
whatever keeps it from giving one well-defined batch output is an error. A layer reached only by a
glob, a class or the default selection is broad: at the first :meth:`~SimilarityModel.capture`
(the first batch, or the CLI's dry run) broad layers that cannot be captured are dropped from
``layers`` with ONE warning that names them and says why. Reasons: the module ran more than once in
the forward pass (torchvision's ``BasicBlock.relu`` is applied twice, so ``"layer*.?.relu"``,
``"layer3.*"`` or ``torch.nn.ReLU`` on a ResNet keep every module but the block ReLUs); it did not
run at all (an auxiliary head skipped in eval mode); its output has no batch dimension of the
batch's size (GPT-2's position embedding ``wpe`` gives ``[1, T, D]``); or ``token_reduction=
"tokens"`` was asked for and the output is not a token sequence (BERT's ``pooler``). After the
first capture the selection is fixed, and the same problems raise errors.

``layers_to_include=None`` selects :func:`default_layers`, the "block outputs": one row per
residual or transformer block, plus the top-level modules around them. Per family:

* torchvision ResNet-18/34: ``conv1, bn1, relu, maxpool, layer1.0, ..., layer4.1, avgpool, fc``
  (14 and 22 layers);
* torchvision ViT: ``conv_proj, encoder.dropout, encoder.layers.encoder_layer_0, ..., encoder.ln,
  heads.head``; Swin: ``features.0`` (patch embedding), ``features.1.0, features.1.1`` (blocks),
  ``features.2`` (patch merging), ..., ``norm, permute, avgpool, flatten, head``; ConvNeXt:
  ``features.0`` (stem), ``features.1.0, ...`` (blocks), ``features.2`` (downsampling), ...,
  ``avgpool, classifier.0, classifier.1, classifier.2``;
* timm ViT: ``patch_embed, pos_drop, patch_drop, norm_pre, blocks.0, ..., norm, fc_norm,
  head_drop, head``;
* Hugging Face BERT-style encoders (``BertModel``): ``embeddings, encoder.layer.0, ...,
  pooler``; GPT-2-style decoders (``GPT2Model``): ``wte, drop, h.0, ..., ln_f`` (``wpe`` is
  dropped at the first capture, see above); ``ViTModel``: ``embeddings, layers.0, ...,
  layernorm, pooler`` (``encoder.layer.*`` in transformers 4). A task model (``BertFor...``,
  ``GPT2LMHeadModel``) gives the same names under its backbone (``bert.encoder.layer.0``,
  ``transformer.h.0``) plus its head.

Order
-----
Layers start in registration order (``model.named_modules()``), which for torchvision models is
the forward order. After the first :meth:`~SimilarityModel.capture`, ``layers`` is re-sorted by the
order in which the hooks fired, i.e. the order in which the outputs were produced (a container's
output comes after the outputs of its children). Read ``layers`` after the first capture, or use
the keys of the returned dict, which always follow ``layers``.

Capture
-------
``capture(inputs, reduce=None)`` moves the tensors in ``inputs`` to the model's device, runs the
model once in ``eval()`` mode under :func:`torch.no_grad` with one forward hook per selected layer,
removes the hooks and restores every module's previous ``training`` flag (in a ``finally``, also
when the forward raises), and returns ``{layer: value}`` in ``layers`` order. A tensor input is
passed as ``model(x)``, a tuple as ``model(*x)``, a dict (or any mapping, e.g. a tokenizer's
``BatchEncoding``) as ``model(**x)``. For each layer the hook

1. picks one tensor out of the module's output: a tensor as is; a Hugging Face ``ModelOutput``
   (``BaseModelOutput`` ...): its first tensor (``last_hidden_state``); a tuple/list: its first
   tensor; or ``output_selector(output)`` for any non-tensor output (required for a plain dict);
2. detaches it and applies the layer's *token reduction* to sequence outputs (below);
3. stores ``reduce(layer, tensor)`` when ``reduce`` is given (called inside the hook, before any
   later in-place operation can modify the output; a return value that shares memory with the
   output is cloned), or a contiguous copy of the tensor otherwise, so later in-place operations
   (``ReLU(inplace=True)``) cannot change it.

Token sequences
---------------
A 3-D output is a token sequence, ``[n, T, D]`` (batch first: Hugging Face, timm, torchvision
ViT) or ``[T, n, D]`` (sequence first: ``nn.MultiheadAttention``/``nn.Transformer*`` with
``batch_first=False``). The layout is read from the module's (or its first submodule's)
``batch_first`` attribute when it has one, and otherwise from the shape: the axis whose size is
the batch size ``n``; batch first wins a tie (``T == n``). It is fixed per layer at the first
capture. Sequence-first outputs are transposed to ``[n, T, D]`` before anything else, so measures
always see samples first.

``token_reduction`` (per model, or a dict ``{layer name or glob: reduction}`` per layer, other
layers ``"auto"``) turns ``[n, T, D]`` into what the measures see:

* ``"mean"``: ``[n, D]``, the mean over each sequence's valid tokens;
* ``"first"``: ``[n, D]``, the first valid token (the CLS token of BERT/ViT);
* ``"last"``: ``[n, D]``, the last valid token (causal language models: the token that has seen
  the whole sequence);
* ``"tokens"``: ``[n_valid, D]``, every valid token is a sample, for token-level comparisons where
  both models see the same tokens (same tokenizer); both models must give the same number of
  tokens, which :class:`~simtorch_semantic.measures.base.BaseSimilarity` checks per batch. Every
  layer of a model must then be a token sequence (broad layers that are not are dropped). The
  row count depends on the mask, so on CUDA this costs one host sync per layer and batch;
* ``"flatten"``: ``[n, T, D]`` unchanged (measures flatten it to ``T*D`` features, or treat the
  ``T`` tokens as positions, as for conv maps), padded tokens set to 0. Comparable only between
  sequences of one fixed length (image patches); padding changes ``T``;
* ``"auto"`` (default): ``"mean"`` when the batch is text (it carries an attention mask, or the
  input is a 2-D integer tensor of token ids), ``"flatten"`` otherwise (ViT patch tokens are
  compared position by position, like conv maps). Outputs that are not 3-D (conv maps, Swin's
  ``[n, H, W, C]``, pooled ``[n, D]``) are never reduced.

Padding. The attention mask ``[n, T]`` (1 = real token, 0 = padding) is
``inputs["attention_mask"]`` for dict inputs (another key with ``attention_mask="key"``, or
``attention_mask=callable(inputs) -> mask``; ``attention_mask=None`` ignores masks). Every
reduction uses only valid tokens (``"first"`` and ``"last"`` work for left and right padding), so
adding padding never changes a value, as long as the model's own outputs at real tokens do not
depend on padding (true with the mask passed to the model; a causal model padded on the left also
needs ``position_ids``). Without a mask every token is valid. ``"first"``/``"last"``/``"tokens"``
gather values in the output's dtype; ``"mean"`` computes in at least float32. A mask whose length
differs from a layer's token count is an error for that layer (broad layers are dropped, see
above). A sequence without any valid token is an error (checked when the mask is on the CPU).

Devices and precision. ``device=None`` leaves the model where it is (e.g. a Hugging Face model
dispatched over several GPUs with ``device_map``; moving it is refused with an error); inputs
are sent to the device of the model's first parameter, and activations stay on their layer's
device until a measure moves them to its own ``device``. Half-precision (bf16/fp16) outputs are
stored as they are; measures compute Gram matrices from them in float32 or float64
(:mod:`simtorch_semantic.functional.kernels`).
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import warnings
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

__all__ = ["SimilarityModel", "default_layers", "reduce_tokens", "TOKEN_REDUCTIONS"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_GLOB_CHARS = ("*", "?", "[")

#: the values ``token_reduction`` accepts (``"auto"`` resolves to one of the others)
TOKEN_REDUCTIONS = ("auto", "flatten", "mean", "first", "last", "tokens")


# ---------------------------------------------------------------------- default layers
def _is_block_stack(module: nn.Module) -> bool:
    """A container whose children are all composite modules (with submodules) of one class:
    ``layer1`` of a ResNet, ``encoder.layer`` of BERT, ``blocks`` of a timm ViT."""
    if not isinstance(module, _CONTAINERS):
        return False
    kids = list(module.children())
    return bool(kids) and all(type(k) is type(kids[0]) and next(k.children(), None) is not None
                              for k in kids)


def _holds_block_stack(module: nn.Module) -> bool:
    return any(_is_block_stack(m) for m in module.modules())


def _expand(module: nn.Module, prefix: str, top: bool, out: list[str]) -> None:
    for name, child in module.named_children():
        qual = prefix + name
        if _is_block_stack(child):
            for block_name, block in child.named_children():
                q = f"{qual}.{block_name}"
                # a stage (a stack of stacks, or a module holding its own stack) gives its blocks
                if _is_block_stack(block) or any(_is_block_stack(c) for c in block.children()):
                    _expand(block, q + ".", False, out)
                else:
                    out.append(q)
        elif _holds_block_stack(child):
            _expand(child, qual + ".", False, out)
        elif top and isinstance(child, _CONTAINERS) and next(child.children(), None) is not None:
            out.extend(f"{qual}.{sub}" for sub, _ in child.named_children())
        else:
            out.append(qual)


def default_layers(model: nn.Module) -> list[str]:
    """The default layer selection of ``model``: its "block outputs", one row per block.

    Rules, applied to the model's children in order:

    * a *block stack* (an ``nn.Sequential``/``nn.ModuleList``/``nn.ModuleDict`` whose children are
      composite modules of one class: ResNet's ``layer1``, BERT's ``encoder.layer``, GPT-2's
      ``h``, timm's ``blocks``, torchvision ViT's ``encoder.layers``) gives one name per block;
      a block that is itself a stack or directly holds one (a stage) gives its blocks instead;
    * a module that holds a block stack deeper down (ViT's ``encoder``, Swin's and ConvNeXt's
      ``features``, BERT's ``encoder``) is replaced by its children, recursively;
    * a top-level container without blocks (``classifier = Sequential(...)``) gives its children;
    * anything else is one layer.

    torchvision ResNet-18 gives 14 names (``conv1, bn1, relu, maxpool, layer1.0, ..., layer4.1,
    avgpool, fc``), ResNet-34 22; see the module docstring for ViT, Swin, ConvNeXt, timm and
    Hugging Face models. The result is in registration order.

    Raises ``ValueError`` when the model has no submodules at all.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names: list[str] = []
    _expand(model, "", True, names)
    if not names:
        raise ValueError(
            f"model {type(model).__name__} has no submodules, so there are no layers to select; "
            "wrap a model built from submodules (e.g. nn.Sequential(...))"
        )
    return names


# ---------------------------------------------------------------------- token reduction
def reduce_tokens(x: torch.Tensor, how: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a batch-first token sequence ``x [n, T, D]`` with the valid-token ``mask [n, T]``.

    ``how``: ``"mean"`` -> ``[n, D]`` mean over valid tokens (in at least float32);
    ``"first"``/``"last"`` -> ``[n, D]`` the first/last valid token (any padding side);
    ``"tokens"`` -> ``[n_valid, D]`` the valid tokens in sequence order; ``"flatten"`` ->
    ``[n, T, D]`` with padded tokens set to 0. ``mask`` is boolean (True = real token) on
    ``x``'s device, or None (every token valid). Every sequence must have a valid token (not
    checked here). Padded positions never reach the result, not even as NaN.
    """
    n, T = x.shape[0], x.shape[1]
    if how == "flatten":
        return x if mask is None else x.masked_fill(~mask[..., None], 0)
    if how == "mean":
        if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if mask is None:
            return x.mean(dim=1)
        total = x.masked_fill(~mask[..., None], 0).sum(dim=1)
        return total / mask.sum(dim=1, keepdim=True).to(total.dtype)
    if how == "tokens":
        return x.reshape(n * T, *x.shape[2:]) if mask is None else x[mask]
    if how in ("first", "last"):
        if mask is None:
            return x[:, 0 if how == "first" else T - 1]
        m = mask.to(torch.uint8)
        if how == "first":
            idx = m.argmax(dim=1)
        else:
            idx = (T - 1) - m.flip(1).argmax(dim=1)
        return x[torch.arange(n, device=x.device), idx]
    raise ValueError(f"token reduction must be one of {TOKEN_REDUCTIONS[1:]}, got {how!r}")


# ---------------------------------------------------------------------- helpers
def _to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor in ``obj`` (a tensor, or nested tuples/lists/dicts) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        moved = [_to_device(v, device) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else tuple(moved)
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def _type_name(obj: Any) -> str:
    return type(obj).__name__


def _first_tensor(obj: Any):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a model without any."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _spread_devices(model: nn.Module) -> set:
    """Devices a model is spread over: a Hugging Face ``hf_device_map`` (accelerate dispatch),
    else the devices of its parameters."""
    device_map = getattr(model, "hf_device_map", None)
    if isinstance(device_map, Mapping) and device_map:
        return {str(d) for d in device_map.values()}
    return {str(p.device) for p in model.parameters()}


def _batch_first_attr(module: nn.Module):
    """``batch_first`` of the module or of its first submodule that has one, else None."""
    for sub in module.modules():
        flag = getattr(sub, "batch_first", None)
        if isinstance(flag, bool):
            return flag
    return None


def _shape(x) -> str:
    return "[" + ", ".join(str(s) for s in x.shape) + "]"


class _Capture:
    """What one capture knows about its batch: size ``n``, valid-token mask, text or not."""

    def __init__(self, n, mask, text):
        self.n = n
        self.mask = mask                      # bool [n, T] or None
        self.T = None if mask is None else int(mask.shape[1])
        self.text = text
        self.seen: set = set()
        self.skip: dict = {}
        self.rows: dict = {}
        self._masks: dict = {}

    def mask_on(self, device):
        if self.mask is None:
            return None
        key = str(device)
        if key not in self._masks:
            self._masks[key] = self.mask.to(device)
        return self._masks[key]


def _check_reduction(value, where: str = "") -> str:
    if not isinstance(value, str) or value not in TOKEN_REDUCTIONS:
        raise ValueError(
            f"token_reduction{where} must be one of {', '.join(repr(r) for r in TOKEN_REDUCTIONS)}"
            f", got {value!r}; see the SimilarityModel docstring (Token sequences)")
    return value


class SimilarityModel:
    """A model and a selection of its layers whose outputs :meth:`capture` returns.

    Args:
        model: the ``torch.nn.Module`` (any torchvision, timm or Hugging Face ``transformers``
            model, random or pretrained, e.g. ``AutoModel.from_pretrained(name)``); it is moved
            to ``device`` unless ``device=None``.
        model_name: name shown in results and plots (default: the model's class name).
        layers_to_include: layer selection (names, glob patterns, module classes or module
            objects; see the module docstring), or ``None`` for :func:`default_layers` (the
            residual/transformer blocks: ``layer1.0``..., ``encoder.layer.*`` (BERT), ``h.*``
            (GPT-2), ``blocks.*`` (timm), ``encoder.layers.*`` (torchvision ViT)).
        device: device the model is moved to and inputs are sent to (``"cpu"``, ``"cuda:0"``,
            a ``torch.device``), or ``None`` to leave the model where it is (a model dispatched
            over several devices must use ``None``); inputs then go to its first parameter's
            device.
        output_selector: ``callable(output) -> Tensor`` applied to every module output that is
            not a tensor (tuple, list, dict, ``ModelOutput``, custom object). Without it,
            ``ModelOutput``/tuple/list outputs give their first tensor and plain dict outputs
            are an error.
        token_reduction: how token sequences ``[n, T, D]`` reach the measures: ``"auto"``
            (default: ``"mean"`` for text batches, ``"flatten"`` otherwise), ``"mean"``,
            ``"first"``, ``"last"``, ``"tokens"`` or ``"flatten"``; or a dict
            ``{layer name or glob: reduction}`` (other layers ``"auto"``). See the module
            docstring (Token sequences).
        attention_mask: where the valid-token mask ``[n, T]`` of a batch comes from: the key of
            dict inputs (default ``"attention_mask"``), a ``callable(inputs) -> mask or None``,
            or ``None`` to treat every token as valid. Every reduction uses only valid tokens.

    Attributes:
        model, model_name, device (``torch.device``), layers (``list[str]``, forward order),
        output_selector, token_reduction, attention_mask, token_reductions (``{layer:
        reduction}`` resolved for the sequence layers at the first capture), n_rows (rows per
        layer in the last capture: the batch size, or the valid tokens with ``"tokens"``).

    Example:
        >>> import torchvision
        >>> sm = SimilarityModel(torchvision.models.resnet18(weights=None), "resnet18",
        ...                      layers_to_include=["conv1", "layer*.?", torch.nn.Linear])
        >>> feats = sm.capture(torch.randn(2, 3, 32, 32))   # {"conv1": [2, 64, 16, 16], ...}
        >>> from transformers import AutoModel                # doctest: +SKIP
        >>> bert = SimilarityModel(AutoModel.from_pretrained("bert-base-uncased"))  # +SKIP
        >>> bert.capture({"input_ids": ids, "attention_mask": mask})   # +SKIP
        {"embeddings": [n, 768], "encoder.layer.0": [n, 768], ...}     # mean over valid tokens
    """

    def __init__(self, model, model_name=None, layers_to_include=None, device="cpu",
                 output_selector=None, *, token_reduction="auto",
                 attention_mask="attention_mask"):
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {_type_name(model)}; pass the network "
                "itself (e.g. torchvision.models.resnet18(weights=None))"
            )
        if model_name is None:
            model_name = type(model).__name__
        if not isinstance(model_name, str) or not model_name:
            raise TypeError(f"model_name must be a non-empty str or None, got {model_name!r}")
        if output_selector is not None and not callable(output_selector):
            raise TypeError(
                "output_selector must be a callable output -> Tensor or None, got "
                f"{_type_name(output_selector)}"
            )
        if not (attention_mask is None or isinstance(attention_mask, str)
                or callable(attention_mask)):
            raise TypeError(
                "attention_mask must be the key of the mask in dict inputs (a str), a "
                f"callable(inputs) -> [n, T] mask, or None; got {_type_name(attention_mask)}")
        if device is None:
            self.device = _model_device(model)
            self.model = model
        else:
            try:
                self.device = torch.device(device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(
                    f"device {device!r} is not a valid torch device; use e.g. 'cpu' or "
                    "'cuda:0', or None to leave the model where it is"
                ) from exc
            spread = _spread_devices(model)
            if len(spread) > 1:
                raise ValueError(
                    f"model {model_name} is spread over the devices {sorted(spread)}; moving it "
                    f"to device={str(self.device)!r} would undo that: pass device=None to "
                    "SimilarityModel to leave it where it is")
            self.model = model.to(self.device)
        self.model_name = model_name
        self.output_selector = output_selector
        self.attention_mask = attention_mask
        self._is_default = layers_to_include is None
        if self._is_default:
            self.layers = default_layers(model)
            self._strict: set[str] = set()
        else:
            self.layers, self._strict = self._resolve(layers_to_include)
        if isinstance(token_reduction, Mapping):
            token_reduction = dict(token_reduction)
            for key, value in token_reduction.items():
                if not isinstance(key, str):
                    raise TypeError(
                        "token_reduction dict keys must be layer names or glob patterns, got "
                        f"{key!r}")
                _check_reduction(value, f"[{key!r}]")
                if not any(key == n or fnmatch.fnmatchcase(n, key) for n in self.layers):
                    close = difflib.get_close_matches(key, self.layers, n=3, cutoff=0.5)
                    raise ValueError(
                        f"token_reduction key {key!r} matches none of the selected layers of "
                        f"{model_name}" + (f"; close names: {close}" if close else "")
                        + "; see SimilarityModel(...).layers")
        else:
            _check_reduction(token_reduction)
        self.token_reduction = token_reduction
        self.token_reductions: dict[str, str] = {}
        self._layouts: dict[str, str] = {}
        self.n_rows: int | None = None
        self._order_fixed = False

    # ------------------------------------------------------------------ layer selection
    def available_layers(self) -> list[str]:
        """Every qualified module name of the model (the root excluded), in registration order."""
        return [name for name, _ in self.model.named_modules() if name]

    def _resolve(self, selection) -> tuple[list[str], set[str]]:
        """Resolve a layer selection to de-duplicated qualified names in registration order,
        and the set of names selected strictly (exact name or module object)."""
        if isinstance(selection, (str, type, nn.Module)):
            selection = [selection]
        try:
            items = list(selection)
        except TypeError:
            raise TypeError(
                "layers_to_include must be None or a list of module names, glob patterns, "
                f"module classes or modules, got {_type_name(selection)}"
            ) from None
        if not items:
            raise ValueError(
                "layers_to_include is empty, which would select no layer; pass None for the "
                "default (every block output, see simtorch_semantic.model.default_layers) or a "
                "list of names, glob patterns or module classes "
                "(see SimilarityModel.available_layers())"
            )
        named = [(name, mod) for name, mod in self.model.named_modules() if name]
        names = [name for name, _ in named]
        name_set = set(names)
        chosen: set[str] = set()
        strict: set[str] = set()
        for item in items:
            exact = False
            if isinstance(item, str):
                if item in name_set:
                    hits, exact = [item], True
                elif any(c in item for c in _GLOB_CHARS):
                    hits = [n for n in names if fnmatch.fnmatchcase(n, item)]
                else:
                    hits = []
                if not hits:
                    close = difflib.get_close_matches(item, names, n=5, cutoff=0.5)
                    if not close and "*" not in item:
                        close = difflib.get_close_matches(item, names, n=5, cutoff=0.3)
                    hint = (f"close names: {', '.join(repr(c) for c in close)}"
                            if close else "no similar names")
                    raise ValueError(
                        f"layer {item!r} not found in {self.model_name}; {hint}; "
                        "see SimilarityModel.available_layers() for every name"
                    )
            elif isinstance(item, type) and issubclass(item, nn.Module):
                hits = [n for n, m in named if isinstance(m, item)]
                if not hits:
                    present = sorted({_type_name(m) for _, m in named})
                    raise ValueError(
                        f"no module of class {item.__name__} in {self.model_name}; classes "
                        f"present: {', '.join(present)}; see SimilarityModel.available_layers()"
                    )
            elif isinstance(item, nn.Module):
                hits = [n for n, m in named if m is item]
                exact = True
                if not hits:
                    raise ValueError(
                        f"the {_type_name(item)} module given in layers_to_include is not a "
                        f"submodule of {self.model_name} (the root model itself cannot be "
                        "selected); see SimilarityModel.available_layers()"
                    )
            else:
                raise TypeError(
                    "layers_to_include items must be module names, glob patterns, module "
                    f"classes or modules, got {item!r} ({_type_name(item)})"
                )
            chosen.update(hits)
            if exact:
                strict.update(hits)
        return [n for n in names if n in chosen], strict

    # ------------------------------------------------------------------ capture
    def _pick(self, name: str, output: Any) -> torch.Tensor:
        """The tensor of one module output (see the class docstring)."""
        if isinstance(output, torch.Tensor):
            return output
        if self.output_selector is not None:
            picked = self.output_selector(output)
            if not isinstance(picked, torch.Tensor):
                raise TypeError(
                    f"output_selector returned {_type_name(picked)} for layer {name!r} of "
                    f"{self.model_name}; it must return a torch.Tensor"
                )
            return picked
        model_output = isinstance(output, Mapping) and callable(getattr(output, "to_tuple", None))
        if isinstance(output, (tuple, list)) or model_output:
            for item in (output.values() if model_output else output):
                if isinstance(item, torch.Tensor):
                    return item
            raise TypeError(
                f"layer {name!r} of {self.model_name} returned a {_type_name(output)} without "
                "any tensor; pass output_selector=callable(output) -> Tensor to SimilarityModel"
            )
        if isinstance(output, dict):
            raise TypeError(
                f"layer {name!r} of {self.model_name} returned a dict with keys "
                f"{list(output)}; pass output_selector=callable(output) -> Tensor to "
                "SimilarityModel to choose one (e.g. output_selector=lambda o: o['out'])"
            )
        raise TypeError(
            f"layer {name!r} of {self.model_name} returned {_type_name(output)}, not a tensor; "
            "pass output_selector=callable(output) -> Tensor to SimilarityModel, or select "
            "another layer"
        )

    def _reduction_spec(self, name: str) -> str:
        spec = self.token_reduction
        if not isinstance(spec, dict):
            return spec
        if name in spec:
            return spec[name]
        for key, value in spec.items():
            if fnmatch.fnmatchcase(name, key):
                return value
        return "auto"

    def _layout(self, name: str, module: nn.Module, x: torch.Tensor, ctx: _Capture):
        """``"batch_first"``/``"sequence_first"`` for a 3-D output, or None when neither fits."""
        if name in self._layouts:
            return self._layouts[name]
        n = ctx.n
        fits_batch = n is None or x.shape[0] == n
        fits_seq = n is not None and x.shape[1] == n
        flag = _batch_first_attr(module)
        if flag is True:
            return "batch_first" if fits_batch else None
        if flag is False:
            return "sequence_first" if fits_seq else None
        if fits_batch:
            return "batch_first"
        return "sequence_first" if fits_seq else None

    def _sequence(self, name: str, module: nn.Module, x: torch.Tensor, ctx: _Capture):
        """Apply the layer's token reduction: ``(tensor, None)``, or ``(None, problem)`` when the
        output cannot be captured as asked (no batch dimension, not a sequence, mask mismatch)."""
        how = self.token_reductions.get(name)
        if how is None:
            how = self._reduction_spec(name)
            if how == "auto":
                how = "mean" if ctx.text else "flatten"
        n = ctx.n
        if x.ndim != 3:
            if n is not None and (x.ndim == 0 or x.shape[0] != n):
                return None, f"its output {_shape(x)} has no batch dimension of size {n}"
            if how == "tokens":
                return None, (f"its output {_shape(x)} is not a token sequence [n, T, D], which "
                              "token_reduction='tokens' needs")
            return x, None
        layout = self._layout(name, module, x, ctx)
        if layout is None:
            return None, (f"its output {_shape(x)} has no batch dimension of size {n} (neither "
                          "[n, T, D] nor [T, n, D])")
        if layout == "sequence_first":
            x = x.transpose(0, 1)
        mask = ctx.mask_on(x.device)
        if mask is not None and tuple(x.shape[:2]) != tuple(mask.shape):
            return None, (f"its output {_shape(x)} has {x.shape[1]} tokens but the attention "
                          f"mask is {_shape(mask)}; select layers that keep the input's tokens, "
                          "or pass attention_mask=None to SimilarityModel")
        self._layouts.setdefault(name, layout)
        self.token_reductions.setdefault(name, how)
        return reduce_tokens(x, how, mask), None

    def _make_hook(self, name: str, store: dict, reduce: Callable | None, ctx: _Capture):
        pick = self._pick
        strict = name in self._strict

        def hook(module, args, output):
            if name in ctx.seen:
                if strict or self._order_fixed:
                    raise RuntimeError(
                        f"layer {name!r} of {self.model_name} ran more than once in one forward "
                        "pass, so its output would be ambiguous; select a module that runs once "
                        "(e.g. the enclosing block or a module used in a single place); a glob "
                        "or class selection skips such modules with a warning"
                    )
                ctx.skip[name] = "ran more than once in one forward pass (ambiguous output)"
                store.pop(name, None)
                ctx.rows.pop(name, None)
                return
            ctx.seen.add(name)
            tensor = pick(name, output).detach()
            tensor, problem = self._sequence(name, module, tensor, ctx)
            if problem is not None:
                if strict or self._order_fixed:
                    raise ValueError(f"layer {name!r} of {self.model_name}: {problem}")
                ctx.skip[name] = problem
                return
            ctx.rows[name] = int(tensor.shape[0])
            if reduce is None:
                value = tensor.contiguous() if not tensor.is_contiguous() else tensor.clone()
            else:
                value = reduce(name, tensor)
                if (isinstance(value, torch.Tensor) and value.numel()
                        and value.untyped_storage().data_ptr()
                        == tensor.untyped_storage().data_ptr()):
                    value = value.clone()
            store[name] = value

        return hook

    def _check_kwargs(self, inputs: dict) -> None:
        """Refuse dict keys that the model's forward does not take (labels, raw text ...)."""
        try:
            params = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            return
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        unknown = [k for k in inputs if k not in params]
        if unknown:
            raise TypeError(
                f"the input keys {unknown} are not arguments of {self.model_name}.forward"
                f"({', '.join(params)}); give the model only its inputs: input_key=[...] "
                "(the keys to pass) or input_fn=callable(batch) -> input on the measure")

    def _mask_of(self, inputs: Any, n: int | None):
        """The valid-token mask ``[n, T]`` (bool) of a batch, or None (every token valid)."""
        spec = self.attention_mask
        if spec is None:
            return None
        if callable(spec):
            mask, where = spec(inputs), "returned by the attention_mask callable"
            if mask is None:
                return None
        else:
            if not isinstance(inputs, Mapping) or inputs.get(spec) is None:
                return None
            mask, where = inputs[spec], f"inputs[{spec!r}]"
        if isinstance(mask, np.ndarray):
            mask = torch.as_tensor(mask)
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or (
                n is not None and mask.shape[0] != n):
            got = _shape(mask) if isinstance(mask, torch.Tensor) else _type_name(mask)
            raise ValueError(
                f"the attention mask {where} must be a tensor [n, T] (n = {n} sequences; 1 = "
                f"token, 0 = padding), got {got}; pass attention_mask=None to SimilarityModel "
                "to ignore it, or attention_mask=callable(inputs) -> mask")
        mask = mask != 0
        if mask.device.type == "cpu" and mask.shape[1]:
            empty = torch.nonzero(~mask.any(dim=1)).flatten().tolist()
            if empty:
                raise ValueError(
                    f"sequences {empty[:10]} of the batch have no valid token in the attention "
                    f"mask {where}; every sequence needs at least one token")
        return mask

    @staticmethod
    def _token_ids(inputs: Any) -> bool:
        """True when the model input looks like token ids: a 2-D integer tensor."""
        candidates = inputs.values() if isinstance(inputs, Mapping) else [_first_tensor(inputs)]
        return any(isinstance(t, torch.Tensor) and t.ndim == 2 and not t.is_floating_point()
                   and not t.is_complex() and t.dtype != torch.bool for t in candidates)

    def capture(self, inputs, reduce=None) -> dict[str, Any]:
        """Run the model on one batch and return the selected layers' outputs.

        Args:
            inputs: the model input. A tensor is passed as ``model(inputs)``, a tuple as
                positional arguments ``model(*inputs)``, a dict or other mapping (a tokenizer's
                ``BatchEncoding``) as keyword arguments ``model(**inputs)`` (keys that the
                model's ``forward`` does not take are an error); anything else (a list, a
                namedtuple, a custom object) as the single argument. Tensors inside are moved
                to ``self.device``.
            reduce: optional ``callable(layer_name, tensor) -> value`` called inside the hook on
                the detached, token-reduced output ``[rows, ...]`` (possibly non-contiguous);
                its return value is stored instead of a copy of the output.

        Returns:
            ``{layer: value}`` in ``self.layers`` order; value is a detached contiguous copy of
            the (token-reduced) output ``[rows, ...]`` on its layer's device, or ``reduce``'s
            return value. ``rows`` is the batch size, or the number of valid tokens with
            ``token_reduction="tokens"``; it is the same for every layer and kept in
            ``self.n_rows``.
        """
        if reduce is not None and not callable(reduce):
            raise TypeError(
                f"reduce must be a callable (layer_name, tensor) -> value or None, got "
                f"{_type_name(reduce)}"
            )
        if isinstance(inputs, Mapping):
            inputs = dict(inputs)
            self._check_kwargs(inputs)
        first = _first_tensor(inputs)
        n = int(first.shape[0]) if first is not None and first.ndim else None
        mask = self._mask_of(inputs, n)
        ctx = _Capture(n, mask, mask is not None or self._token_ids(inputs))
        inputs = _to_device(inputs, self.device)
        named = list(self.model.named_modules())
        modules = dict(named)
        all_modules = [module for _, module in named]
        training = [module.training for module in all_modules]
        store: dict[str, Any] = {}
        handles = []
        try:
            for name in self.layers:
                if name not in modules:
                    raise RuntimeError(
                        f"layer {name!r} is no longer a submodule of {self.model_name} (was the "
                        "model changed after wrapping?); create a new SimilarityModel")
                handles.append(modules[name].register_forward_hook(
                    self._make_hook(name, store, reduce, ctx)))
            if any(training):
                self.model.eval()
            with torch.no_grad():
                if isinstance(inputs, dict):
                    self.model(**inputs)
                elif isinstance(inputs, tuple) and not hasattr(inputs, "_fields"):  # not namedtuple
                    self.model(*inputs)
                else:
                    self.model(inputs)
        finally:
            for handle in handles:
                handle.remove()
            if any(training):
                for module, flag in zip(all_modules, training):
                    module.training = flag
        if len(store) != len(self.layers) or not self._order_fixed or ctx.skip:
            self._fix_order(store, ctx)
        rows = {name: ctx.rows[name] for name in self.layers}
        if len(set(rows.values())) > 1:
            raise ValueError(
                f"the layers of {self.model_name} give different numbers of rows {rows}: "
                "token_reduction='tokens' makes every valid token a row, the other reductions "
                "one row per sequence; use 'tokens' for every layer or for none")
        self.n_rows = next(iter(rows.values()))
        return {name: store[name] for name in self.layers}

    def _fix_order(self, store: dict, ctx: _Capture) -> None:
        """After a capture: put ``layers`` in hook firing order; drop the broad layers that gave
        no usable output (first capture only, one warning) or raise for strict ones."""
        missing = [name for name in self.layers if name not in store and name not in ctx.skip]
        strict_missing = [name for name in missing if name in self._strict]
        if missing and (self._order_fixed or strict_missing):
            raise RuntimeError(
                f"selected layers {strict_missing or missing} of {self.model_name} did not run "
                "in the forward pass (in eval mode), so they have no output; remove them from "
                "layers_to_include"
            )
        dropped = {name: "did not run in the forward pass (in eval mode)" for name in missing}
        dropped.update(ctx.skip)
        kept = [name for name in store if name not in dropped]
        if dropped:
            by_reason: dict[str, list] = {}
            for name, reason in dropped.items():
                by_reason.setdefault(reason, []).append(name)
            kind = "default" if self._is_default else "selected (by glob or class)"
            why = "; ".join(f"{names}: {reason}" for reason, names in by_reason.items())
            if not kept:
                raise ValueError(
                    f"no selected layer of {self.model_name} gives a usable output: {why}; "
                    "select other layers (see SimilarityModel.available_layers())")
            warnings.warn(
                f"{kind} layers dropped from the selection of {self.model_name}: {why}. Name a "
                "layer exactly to get an error instead",
                stacklevel=3,
            )
        self.layers = kept
        self._order_fixed = True

    # ------------------------------------------------------------------ conveniences
    def forward(self, *args, **kwargs):
        """Call the wrapped model unchanged (no hooks, no mode change, no device move)."""
        return self.model(*args, **kwargs)

    __call__ = forward

    def __repr__(self) -> str:
        shown = self.layers if len(self.layers) <= 6 else (
            self.layers[:3] + ["..."] + self.layers[-2:])
        return (f"SimilarityModel(name={self.model_name!r}, {len(self.layers)} layers: "
                f"[{', '.join(shown)}], device={self.device})")
