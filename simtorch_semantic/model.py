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

``layers_to_include=None`` selects :func:`default_layers`: every top-level child of the model,
where a top-level child that is a container (``nn.Sequential``, ``nn.ModuleList``,
``nn.ModuleDict``) is replaced by its own children. For torchvision's ResNet-18 this gives the 14
"block outputs" ``conv1, bn1, relu, maxpool, layer1.0, layer1.1, ..., layer4.1, avgpool, fc``
(22 for ResNet-34). A default layer that never runs in the forward pass (e.g. an auxiliary head
that is skipped in eval mode) is dropped after the first capture with a warning; an explicitly
selected layer that never runs is an error.

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
when the forward raises), and returns ``{layer: value}`` in ``layers`` order. For each layer the
hook picks one tensor out of the module's output (a tensor as is; tuple/list: the first tensor, or
``output_selector(output)``; dict: ``output_selector(output)``, which is then required), detaches
it, and stores

* ``reduce(layer, tensor)`` when ``reduce`` is given (called inside the hook, before any later
  in-place operation can modify the output; a return value that shares memory with the output is
  cloned), or
* a contiguous copy of the tensor otherwise, so later in-place operations (``ReLU(inplace=True)``)
  cannot change it.

A selected module that runs twice in one forward pass (e.g. torchvision's ``BasicBlock.relu``)
raises :class:`RuntimeError`: its output would be ambiguous.
"""
from __future__ import annotations

import difflib
import fnmatch
import warnings
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["SimilarityModel", "default_layers"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_GLOB_CHARS = ("*", "?", "[")


def default_layers(model: nn.Module) -> list[str]:
    """The default layer selection of ``model``: its "block outputs".

    Every top-level child (``model.named_children()``), except that a top-level child which is a
    container (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``) with children is replaced
    by its children (``layer1`` -> ``layer1.0, layer1.1``). torchvision ResNet-18 gives 14 names
    (``conv1, bn1, relu, maxpool, layer1.0, ..., layer4.1, avgpool, fc``), ResNet-34 gives 22.

    Raises ``ValueError`` when the model has no submodules at all.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names: list[str] = []
    for name, child in model.named_children():
        grandchildren = list(child.named_children())
        if isinstance(child, _CONTAINERS) and grandchildren:
            names.extend(f"{name}.{sub}" for sub, _ in grandchildren)
        else:
            names.append(name)
    if not names:
        raise ValueError(
            f"model {type(model).__name__} has no submodules, so there are no layers to select; "
            "wrap a model built from submodules (e.g. nn.Sequential(...))"
        )
    return names


def _to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor in ``obj`` (a tensor, or nested tuples/lists/dicts) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        moved = [_to_device(v, device) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else tuple(moved)
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def _type_name(obj: Any) -> str:
    return type(obj).__name__


class SimilarityModel:
    """A model and a selection of its layers whose outputs :meth:`capture` returns.

    Args:
        model: the ``torch.nn.Module``; it is moved to ``device``.
        model_name: name shown in results and plots (default: the model's class name).
        layers_to_include: layer selection (names, glob patterns, module classes or module
            objects; see the module docstring), or ``None`` for :func:`default_layers`.
        device: device the model is moved to and inputs are sent to (``"cpu"``, ``"cuda:0"``,
            a ``torch.device``).
        output_selector: ``callable(output) -> Tensor`` applied to every module output that is
            not a tensor (tuple, list, dict, custom object). Without it, tuple/list outputs give
            their first tensor and dict outputs are an error.

    Attributes:
        model, model_name, device (``torch.device``), layers (``list[str]``, forward order),
        output_selector.

    Example:
        >>> import torchvision
        >>> sm = SimilarityModel(torchvision.models.resnet18(weights=None), "resnet18",
        ...                      layers_to_include=["conv1", "layer*.?", torch.nn.Linear])
        >>> feats = sm.capture(torch.randn(2, 3, 32, 32))   # {"conv1": [2, 64, 16, 16], ...}
    """

    def __init__(self, model, model_name=None, layers_to_include=None, device="cpu",
                 output_selector=None):
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
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                f"device {device!r} is not a valid torch device; use e.g. 'cpu' or 'cuda:0'"
            ) from exc
        self.model = model.to(self.device)
        self.model_name = model_name
        self.output_selector = output_selector
        self._is_default = layers_to_include is None
        if self._is_default:
            self.layers = default_layers(model)
        else:
            self.layers = self._resolve(layers_to_include)
        self._order_fixed = False

    # ------------------------------------------------------------------ layer selection
    def available_layers(self) -> list[str]:
        """Every qualified module name of the model (the root excluded), in registration order."""
        return [name for name, _ in self.model.named_modules() if name]

    def _resolve(self, selection) -> list[str]:
        """Resolve a layer selection to de-duplicated qualified names in registration order."""
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
        for item in items:
            if isinstance(item, str):
                if item in name_set:
                    hits = [item]
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
        return [n for n in names if n in chosen]

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
        if isinstance(output, (tuple, list)):
            for item in output:
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

    def _make_hook(self, name: str, store: dict, reduce: Callable | None):
        pick = self._pick

        def hook(module, args, output):
            if name in store:
                raise RuntimeError(
                    f"layer {name!r} of {self.model_name} ran more than once in one forward "
                    "pass, so its output would be ambiguous; select a module that runs once "
                    "(e.g. the enclosing block or a module used in a single place)"
                )
            tensor = pick(name, output).detach()
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

    def capture(self, inputs, reduce=None) -> dict[str, Any]:
        """Run the model on one batch and return the selected layers' outputs.

        Args:
            inputs: the model input. A tensor is passed as ``model(inputs)``, a tuple as
                positional arguments ``model(*inputs)``, a dict as keyword arguments
                ``model(**inputs)``; anything else (a list, a namedtuple, a custom object) as the
                single argument. Tensors inside are moved to ``self.device``.
            reduce: optional ``callable(layer_name, tensor) -> value`` called inside the hook on
                the detached output tensor ``[batch, ...]`` (possibly non-contiguous); its return
                value is stored instead of a copy of the output.

        Returns:
            ``{layer: value}`` in ``self.layers`` order; value is a detached contiguous copy of
            the output ``[batch, ...]`` on ``self.device``, or ``reduce``'s return value.
        """
        if reduce is not None and not callable(reduce):
            raise TypeError(
                f"reduce must be a callable (layer_name, tensor) -> value or None, got "
                f"{_type_name(reduce)}"
            )
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
                handles.append(
                    modules[name].register_forward_hook(self._make_hook(name, store, reduce)))
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
        if len(store) != len(self.layers) or not self._order_fixed:
            self._fix_order(store)
        return {name: store[name] for name in self.layers}

    def _fix_order(self, store: dict) -> None:
        """After a capture: put ``layers`` in hook firing order; handle layers that never ran."""
        missing = [name for name in self.layers if name not in store]
        if missing:
            if self._is_default and not self._order_fixed:
                warnings.warn(
                    f"default layers {missing} of {self.model_name} did not run in the forward "
                    "pass (in eval mode) and are dropped from the selection",
                    stacklevel=3,
                )
            else:
                raise RuntimeError(
                    f"selected layers {missing} of {self.model_name} did not run in the forward "
                    "pass (in eval mode), so they have no output; remove them from "
                    "layers_to_include"
                )
        self.layers = list(store)
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
