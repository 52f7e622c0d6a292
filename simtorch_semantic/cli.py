r"""The ``simtorch-semantic`` command: compare two torchvision models layer by layer.

Usage::

    simtorch-semantic compare resnet18 resnet34 --out results/
    simtorch-semantic compare resnet18 resnet34 --measure rbf_cka --layers-a "layer?.?" --n 512
    simtorch-semantic compare resnet18 resnet18 --measure semantic_cka --option matching=greedy \
        --layers-a "layer4.?" --layers-b "layer4.?" --seed 1 --out results/
    python -m simtorch_semantic compare vgg11 vgg13 --weights DEFAULT --out results/

``compare`` builds both models with :func:`torchvision.models.get_model` (random initialisation by
default, seeded by ``--seed``; ``--weights DEFAULT`` loads torchvision's pretrained weights when
they are in the torch hub cache or can be downloaded), wraps them in
:class:`~simtorch_semantic.model.SimilarityModel`, feeds both the same ``--n`` samples of
:func:`~simtorch_semantic.images.default_dataset` (the shipped photographs, or ``--images DIR``,
augmented deterministically, in a seeded random order so that every batch is a random subset),
computes the layer x layer matrix of ``--measure`` and writes
``<A>_vs_<B>_<measure>.png`` (heatmap), ``.csv`` (matrix with layer names) and ``.json``
(matrix and metadata, reloadable with ``SimilarityResult.load``) into ``--out``. The printed
summary and the figure title say how many distinct images the samples come from.

Under ``torchrun --nproc-per-node=N -m simtorch_semantic compare ...`` every rank reads its shard of
the samples (:func:`~simtorch_semantic.distributed.shard_loader`), the ranks combine their states,
and rank 0 alone prints and writes the outputs (the same files as one process); ``--device cuda``
gives each rank its local GPU (``cuda:LOCAL_RANK``). See :mod:`simtorch_semantic.distributed`.
(torchrun's own parser takes ``--n`` for an abbreviation of its options: write ``--samples N``, or
``torchrun ... -m simtorch_semantic -- compare ...``.)

Exit status: 0 on success, 2 for bad arguments (usage, unknown model / layer / measure /
weights / ``--option`` key, too few samples for the measure, unreadable images, a model that
cannot run at ``--image-size``, a semantic_cka plan estimated above ``--max-minutes``), 1 when
the comparison
itself fails, 130 when interrupted. Every error is one line on stderr, without a traceback (set
the environment variable ``SIMTORCH_SEMANTIC_TRACEBACK=1`` to see it).
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import io
import os
import re
import sys
import warnings
from pathlib import Path

__all__ = ["main", "MEASURES", "available_measures", "build_parser", "CLIError", "list_measures_text"]

PROG = "simtorch-semantic"

# name -> (module, class name, fixed keyword arguments, takes --estimator, short description).
# A measure whose module fails to import is left out of the choices (available_measures).
# CCA gets "dims": "n/10" (replaced by max(2, n // 10)): canonical correlations of layers with
# at least n - 1 dimensions are all 1, so each layer is first reduced to its top principal
# components.
MEASURES: dict[str, tuple[str, str, dict, bool, str]] = {
    "cka": ("simtorch_semantic.measures.cka", "CKA", {"kernel": "linear"}, True,
            "linear CKA (Kornblith et al. 2019)"),
    "rbf_cka": ("simtorch_semantic.measures.cka", "CKA", {"kernel": "rbf"}, True,
                "CKA with a Gaussian kernel, bandwidth 0.8 x median distance"),
    "dcka": ("simtorch_semantic.measures.cka", "DeltaCKA", {}, True,
             "deconfounded CKA (Cui et al. 2022), the input as confounder"),
    "rsa": ("simtorch_semantic.measures.rsa", "RSA", {}, False,
            "representational similarity analysis"),
    "procrustes": ("simtorch_semantic.measures.procrustes", "Procrustes", {}, False,
                   "orthogonal Procrustes disparity, a distance"),
    "cca": ("simtorch_semantic.measures.cca", "CCA", {"dims": "n/10"}, False,
            "mean canonical correlation of the top n/10 principal components of each layer"),
    "semantic_cka": ("simtorch_semantic.measures.semantic", "SemanticCKA", {}, False,
                     "permutation-invariant semantic CKA (Wald et al. 2024)"),
}

_ERRORS = (ValueError, TypeError, KeyError, IndexError, LookupError, RuntimeError, OSError,
           NotImplementedError, AssertionError, MemoryError, ImportError)


class CLIError(Exception):
    """A user error: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become one-line :class:`CLIError` instead of usage + exit."""

    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')", 2)


def available_measures() -> dict[str, type]:
    """``{name: class}`` of the measures in :data:`MEASURES` whose module imports."""
    found = {}
    for name, (module, cls_name, _, _, _) in MEASURES.items():
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except Exception:          # a missing optional module (or a broken one) is not offered
            continue
        found[name] = cls
    return found


def _positive_int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``simtorch-semantic`` (subcommand ``compare``)."""
    parser = _Parser(prog=PROG, description="Compare what neural networks represent, layer by "
                     "layer (CKA and friends).")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--list-measures", action="store_true",
                        help="print every measure --measure accepts (registered names, aliases, "
                        "one-line descriptions) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    measure_list = ", ".join(f"{k} ({v[4]})" for k, v in MEASURES.items())
    cmp_ = sub.add_parser(
        "compare", help="compare two torchvision models layer x layer",
        description="Compare two torchvision image-classification models layer x layer on "
        "real photographs (the shipped ones, or those in --images DIR) augmented to --n samples "
        "in a seeded random order, and write a heatmap PNG plus the matrix as CSV and JSON into "
        "--out. The output says how many distinct images the samples come from.",
        epilog="Layer selections are comma-separated exact names ('layer1.0'), glob patterns "
        "('layer?.?', 'layer4.*.conv?'; '*' also crosses dots) or module classes ('nn.Conv2d'). "
        "Model names are those of torchvision.models.list_models(module=torchvision.models). "
        "Exit status: 0 done, 2 bad arguments, 1 the comparison failed; errors are one line "
        "on stderr.")
    cmp_.add_argument("model_a", metavar="MODEL_A", help="torchvision model name, e.g. resnet18")
    cmp_.add_argument("model_b", metavar="MODEL_B", help="torchvision model name, e.g. resnet34")
    cmp_.add_argument("--out", default=None, metavar="DIR",
                      help="folder for the PNG, CSV and JSON files (created if missing; "
                      "required unless --list-layers)")
    cmp_.add_argument("--list-layers", action="store_true",
                      help="print every layer name of MODEL_A and MODEL_B with its module type "
                      "(the default selection marked with *) and exit")
    cmp_.add_argument("--measure", default="cka", metavar="NAME",
                      help=f"similarity measure (default: cka): {measure_list}; or any other "
                      "registered measure or alias (see --list-measures), computed with "
                      "LayerSimilarity (--option spatial=mean|flatten|positions chooses how "
                      "spatial maps become vectors)")
    cmp_.add_argument("--layers-a", default=None, metavar="LAYERS",
                      help="layers of MODEL_A, comma-separated (default: every block output)")
    cmp_.add_argument("--layers-b", default=None, metavar="LAYERS",
                      help="layers of MODEL_B, comma-separated (default: every block output)")
    cmp_.add_argument("--weights", default="none", metavar="WEIGHTS",
                      help="'none' (default: random initialisation, seeded by --seed), "
                      "'DEFAULT' (torchvision's pretrained weights; from the torch hub cache, or "
                      "downloaded) or a weights name such as IMAGENET1K_V1")
    cmp_.add_argument("--n", type=_positive_int(1), default=256, metavar="N",
                      help="number of samples (default: 256): augmented views of the images in "
                      "a seeded random order; at least 3, and 4 for the unbiased estimators "
                      "(under torchrun write --samples N: torchrun takes --n for one of its own "
                      "options)")
    cmp_.add_argument("--samples", dest="n", type=_positive_int(1), default=256,
                      help=argparse.SUPPRESS)     # --n under torchrun
    cmp_.add_argument("--image-size", type=_positive_int(8), default=96, metavar="PX",
                      help="side of the square input images in pixels (default: 96)")
    cmp_.add_argument("--images", default=None, metavar="DIR",
                      help="folder of your own images (default: the shipped photographs)")
    cmp_.add_argument("--batch-size", type=_positive_int(1), default=64, metavar="B",
                      help="batch size (default: 64)")
    cmp_.add_argument("--device", default="cpu", help="torch device (default: cpu), e.g. cuda:0")
    cmp_.add_argument("--estimator", choices=("minibatch", "full"), default=None,
                      help="CKA estimator (cka, rbf_cka, dcka): minibatch (default: unbiased HSIC "
                      "summed over batches, flat memory) or full (all N samples at once, biased "
                      "HSIC unless --option unbiased=true; keeps all activations)")
    cmp_.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="extra keyword argument of the measure class, repeatable, e.g. "
                      "--option matching=greedy (semantic_cka), --option dims=20 (cca), "
                      "--option sigma_frac=0.5 (rbf_cka); values are read as int, float, "
                      "true/false/none or text; an unknown KEY is refused with the valid ones")
    cmp_.add_argument("--max-minutes", type=float, default=60.0, metavar="MIN",
                      help="semantic_cka: time budget of the matching (default: 60); the plan "
                      "(per layer S, C, pairs, solver, estimated time) is printed first, and a "
                      "plan above the budget stops with the ways to shrink it")
    cmp_.add_argument("--seed", type=int, default=0,
                      help="seed of the random weights, the augmentations and the sample order "
                      "(default: 0)")
    cmp_.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    cmp_.add_argument("--bootstrap", type=_positive_int(0), default=0, metavar="N",
                      help="bootstrap resamples for a confidence interval of every cell (default: "
                      "0, none; e.g. 1000); see docs/inference.md for what is resampled")
    cmp_.add_argument("--permutations", type=_positive_int(0), default=0, metavar="N",
                      help="permutations for the p-value, family-wise adjusted p-value and "
                      "calibrated score of every cell (default: 0, none; e.g. 1000); "
                      "non-significant cells are hatched in the PNG, and <stem>_cells.csv lists "
                      "every cell with its interval and p-values")
    return parser


def _one_line(err: BaseException) -> str:
    """The message of an exception on one line (KeyError's quotes dropped)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(str(text).split())
    return text or type(err).__name__


# ---------------------------------------------------------------------------- validation
def _classification_models() -> list[str]:
    import torchvision.models as tvm
    return sorted(tvm.list_models(module=tvm))


def _check_model_name(name: str, option: str) -> str:
    import torchvision.models as tvm
    classification = _classification_models()
    if name in classification:
        return name
    lowered = name.lower()
    if lowered in classification:
        return lowered
    if name in tvm.list_models():
        raise CLIError(f"{option} '{name}' is a torchvision detection/segmentation/video/"
                       "optical-flow model; compare takes image-classification models, e.g. "
                       "resnet18, vgg11, mobilenet_v3_small")
    close = difflib.get_close_matches(lowered, classification, n=5, cutoff=0.5)
    hint = (f"close names: {', '.join(close)}" if close
            else f"examples: {', '.join(classification[:6])}")
    raise CLIError(f"{option}: unknown torchvision model '{name}'; {hint} "
                   "(all names: torchvision.models.list_models(module=torchvision.models))")


def _parse_options(items: list[str]) -> list[tuple[str, object]]:
    """``["k=v", ...]`` -> ``[(k, value)]`` with ints, floats, booleans and None recognised."""
    parsed = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CLIError(f"--option {item!r}: expected KEY=VALUE with a Python identifier as "
                           "KEY, e.g. --option matching=greedy")
        text = text.strip()
        lowered = text.lower()
        value: object
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered == "none":
            value = None
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        parsed.append((key, value))
    return parsed


# keyword arguments of a measure class that the CLI sets itself (not --option keys)
_CLI_SET = ("self", "sim_model1", "sim_model2", "device", "input_key", "input_fn")


def _option_keys(cls) -> list[str] | None:
    """The keyword arguments ``--option`` may set on measure class ``cls``: its named ones plus
    the inference options its ``**inference`` forwards (None: open-ended ``**kwargs``)."""
    import inspect

    from .measures.inference import INFERENCE_OPTIONS
    params = inspect.signature(cls.__init__).parameters.values()
    extra = [p.name for p in params if p.kind is p.VAR_KEYWORD]
    if extra and extra != ["inference"]:
        return None
    named = [p.name for p in params
             if p.name not in _CLI_SET and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named + [k for k in INFERENCE_OPTIONS if extra and k not in named]


def _check_option_keys(measure: str, cls, options: list[tuple[str, object]]) -> None:
    """Refuse ``--option KEY=...`` when KEY is not a keyword argument of the measure class, or
    when ``--measure`` itself fixes it (``kernel`` of cka / rbf_cka)."""
    valid = _option_keys(cls)
    if valid is None:
        return
    fixed = {key for key, value in MEASURES[measure][2].items() if value != "n/10"}
    valid = [key for key in valid if key not in fixed]
    for key, _ in options:
        if key in fixed:
            raise CLIError(f"--option {key}=...: --measure {measure} sets {key}="
                           f"{MEASURES[measure][2][key]!r} itself; choose another --measure "
                           f"(available: {', '.join(MEASURES)})")
        if key == "estimator" and "estimator" in valid:
            raise CLIError("--option estimator=...: use --estimator minibatch|full instead")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise CLIError(f"--option {key}=...: --measure {measure} has no option '{key}'"
                           f"{hint}; valid keys: {', '.join(k for k in valid if k != 'estimator')}")


def _min_samples(measure: str, options: dict) -> tuple[int, str]:
    """The fewest samples for which ``measure`` with ``options`` is not trivially determined."""
    if options.get("estimator") == "minibatch" or options.get("unbiased") is True:
        return 4, "the unbiased HSIC estimator divides by n - 3"
    dims = options.get("dims")
    if measure == "cca" and isinstance(dims, int) and not isinstance(dims, bool):
        return dims + 2, (f"CCA keeps dims={dims} principal components of each layer, and with "
                          f"n <= dims + 1 samples they span every centred direction, so every "
                          "canonical correlation is 1")
    return 3, ("with 2 samples every centred layer is a single direction, so every similarity "
               "is 1 and every distance 0 whatever the models")


def _load_images_option(folder: str):
    """The images of ``--images DIR`` as PIL images, with errors worded for the command line."""
    from .images import IMAGE_EXTENSIONS, load_images
    path = Path(folder).expanduser()
    if not path.exists():
        raise CLIError(f"--images DIR: '{path}' does not exist; give a folder of images, or leave "
                       "--images out to use the shipped photographs")
    if not path.is_dir():
        raise CLIError(f"--images DIR: '{path}' is a file; give the folder that holds the images, "
                       "or leave --images out to use the shipped photographs")
    try:
        return load_images(path)
    except FileNotFoundError:
        raise CLIError(f"--images DIR: no image files in '{path}' (looked for "
                       f"{', '.join(IMAGE_EXTENSIONS)}, in subfolders too); put images there, or "
                       "leave --images out to use the shipped photographs") from None
    except (ValueError, OSError) as err:
        raise CLIError(f"--images DIR: {_one_line(err)}") from err


def _parse_layers(text: str | None, option: str):
    """A comma-separated layer selection -> list for SimilarityModel (None = default)."""
    if text is None:
        return None
    import torch.nn as nn
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise CLIError(f"{option} is empty; give comma-separated layer names or glob patterns "
                       "(e.g. 'conv1,layer*.?'), or leave it out for every block output")
    selection = []
    for item in items:
        match = re.fullmatch(r"(?:torch\.)?nn\.(\w+)", item)
        if match:
            cls = getattr(nn, match.group(1), None)
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise CLIError(f"{option}: '{item}' is not a torch.nn module class "
                               "(e.g. nn.Conv2d, nn.ReLU)")
            selection.append(cls)
        else:
            selection.append(item)
    return selection


def _check_device(text: str):
    import torch
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise CLIError(f"--device '{text}' is not a torch device; use e.g. cpu, cuda or "
                       "cuda:0") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {text}: CUDA is not available on this machine; use "
                           "--device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA "
                           "device(s)")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise CLIError(f"--device {text}: MPS is not available on this machine; use "
                           "--device cpu")
    return device


def _resolve_weights(model_name: str, weights: str):
    """None for 'none', else the weights name, checked against the model's weights enum."""
    if weights.strip().lower() in ("none", ""):
        return None
    import torchvision.models as tvm
    try:
        enum = tvm.get_model_weights(model_name)
    except (ValueError, KeyError):
        raise CLIError(f"--weights {weights}: torchvision has no pretrained weights for "
                       f"{model_name}; use --weights none") from None
    short = weights.strip().split(".")[-1]
    names = list(enum.__members__)
    if short not in names:
        raise CLIError(f"--weights {weights}: not a weights name of {model_name}; choose one "
                       f"of none, {', '.join(names)}")
    return short


def _build_model(name: str, weights, progress: bool):
    """torchvision.models.get_model(name, weights=...), with offline failures made clear."""
    import warnings

    import torch
    import torchvision.models as tvm
    with warnings.catch_warnings():
        # torchvision's notes about future default initialisations are noise here
        warnings.simplefilter("ignore", FutureWarning)
        if weights is None:
            return tvm.get_model(name, weights=None)
        try:
            return tvm.get_model(name, weights=weights, progress=progress)
        except (OSError, RuntimeError, ValueError) as err:   # URLError is an OSError
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise CLIError(
                f"--weights {weights}: cannot load the pretrained weights of {name} "
                f"({_one_line(err)}); they are read from the torch hub cache ({cache}) or "
                "downloaded there once with network access; download them first or use "
                "--weights none"
            ) from err


def _preflight(sim_model, dataset, option: str, layer_option: str, image_size: int) -> None:
    """Capture the selected layers on two samples before the comparison starts.

    A model that cannot run at ``--image-size`` and a layer selection that cannot be captured (a
    module that runs twice or never) then fail early, as argument errors. When the capture fails,
    a bare forward pass tells the two causes apart.
    """
    import torch
    x = torch.stack([dataset[0], dataset[min(1, len(dataset) - 1)]])
    try:
        sim_model.capture(x, reduce=lambda layer, t: None)
        return
    except _ERRORS as err:
        capture_error = err
    model = sim_model.model
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x.to(sim_model.device))
    except Exception as err:
        raise CLIError(f"{option} {sim_model.model_name} cannot run on inputs of shape "
                       f"[batch, 3, {image_size}, {image_size}] ({_one_line(err)}); try another "
                       "--image-size (e.g. 224)") from err
    finally:
        model.train(was_training)
    raise CLIError(f"{layer_option}: {_one_line(capture_error)}") from capture_error


# ---------------------------------------------------------------------------- compare
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _registered(name: str):
    """The registry's spec for ``name`` (a name or alias), or None."""
    from .functional.registry import get_measure
    try:
        return get_measure(name)
    except (ValueError, TypeError):
        return None


def list_measures_text() -> str:
    """One line per measure ``--measure`` accepts: name, description, aliases."""
    from .functional.registry import get_measure, list_measures
    lines = []
    names = list_measures()
    for name in sorted(set(names) | set(MEASURES)):
        if name in names:
            spec = get_measure(name)
            kind = "similarity" if spec.higher_is_similar else "distance"
            aliases = f" [aliases: {', '.join(spec.aliases)}]" if spec.aliases else ""
            lines.append(f"{name:20s} {spec.description} ({kind}){aliases}")
        else:
            lines.append(f"{name:20s} {MEASURES[name][4]} (command-line front door only)")
    return "\n".join(lines)


def _layer_hint(err) -> str:
    """A layer-selection error for the command line: the Python hint becomes the CLI's."""
    return _one_line(err).replace("SimilarityModel.available_layers()",
                                  "--list-layers")


def _layer_listing(name: str, model) -> str:
    """Every module name of ``model`` with its type; the default selection marked with ``*``."""
    from .model import default_layers
    modules = [(n, m) for n, m in model.named_modules() if n]  # available_layers()' order
    chosen = set(default_layers(model))
    lines = [f"{name}: {len(modules)} modules, {len(chosen)} selected by default (*); select "
             "with --layers-a/--layers-b (names or globs, comma-separated)"]
    lines += [f"  {'*' if n in chosen else ' '} {n:<40} {type(m).__name__}" for n, m in modules]
    return "\n".join(lines)


def _compare(args) -> int:
    spec = None if args.measure in MEASURES else _registered(args.measure)
    if spec is not None and spec.name in MEASURES:
        args.measure = spec.name          # an alias of a measure with its own class
        spec = None
    if args.measure not in MEASURES and spec is None:
        measures = available_measures()
        from .functional.registry import list_measures
        known = list(MEASURES) + [m for m in list_measures() if m not in MEASURES]
        close = difflib.get_close_matches(args.measure, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CLIError(f"--measure: unknown measure '{args.measure}'{hint}; available: "
                       f"{', '.join(known) or 'none (the measures modules failed to import)'} "
                       "(see --list-measures)")
    if spec is not None:                  # any other registered measure: LayerSimilarity
        args.measure = spec.name
        module, cls_name, fixed, takes_estimator = ("simtorch_semantic.measures.layer",
                                                    "LayerSimilarity", {}, False)
    else:
        module, cls_name, fixed, takes_estimator, _ = MEASURES[args.measure]
    options = {key: (max(2, args.n // 10) if value == "n/10" else value)
               for key, value in fixed.items()}
    user_options = _parse_options(args.option)
    measures = available_measures()
    if args.measure in measures:
        _check_option_keys(args.measure, measures[args.measure], user_options)
    for key, value in user_options:
        options[key] = value
    if args.bootstrap == 1:
        raise CLIError("--bootstrap 1: an interval needs at least 2 resamples; use e.g. "
                       "--bootstrap 1000 (or 0 for none)")
    if args.bootstrap or args.permutations:  # inference, seeded like the rest of the run
        options.update(n_bootstrap=args.bootstrap, n_permutations=args.permutations,
                       seed=args.seed)
    if cls_name == "SemanticCKA":  # plan before work: printed, and held to --max-minutes
        if not args.max_minutes > 0:
            raise CLIError(f"--max-minutes must be a positive number, got {args.max_minutes:g}")
        options.setdefault("max_minutes", args.max_minutes)
        options.setdefault("print_plan", True)
    if args.estimator is not None:
        if not takes_estimator:
            raise CLIError(f"--estimator applies to cka, rbf_cka and dcka, not to --measure "
                           f"{args.measure}; leave it out")
        options["estimator"] = args.estimator
    estimator = options.get("estimator", "minibatch" if takes_estimator else None)
    minimum, why = _min_samples(args.measure, {**options, "estimator": estimator})
    if args.n < minimum:
        setting = f"--measure {args.measure}" + (f" --estimator {estimator}" if estimator else "")
        raise CLIError(f"--n {args.n}: {setting} needs at least {minimum} samples ({why}); use "
                       f"--n {minimum} or more")
    if estimator == "minibatch" and min(args.batch_size, args.n) < 4:
        raise CLIError(f"--batch-size {args.batch_size}: the minibatch CKA estimator needs at "
                       "least 4 samples per batch; use --batch-size 4 or more (or "
                       "--estimator full)")
    if args.n % args.batch_size and estimator == "minibatch" and args.n % args.batch_size < 4:
        raise CLIError(f"--n {args.n} with --batch-size {args.batch_size} leaves a last batch of "
                       f"{args.n % args.batch_size} samples, but the minibatch CKA estimator needs "
                       "at least 4 samples per batch; choose --n a multiple of --batch-size")
    name_a = _check_model_name(args.model_a, "MODEL_A")
    name_b = _check_model_name(args.model_b, "MODEL_B")
    weights_a = _resolve_weights(name_a, args.weights)
    weights_b = _resolve_weights(name_b, args.weights)
    layers_a = _parse_layers(args.layers_a, "--layers-a")
    layers_b = _parse_layers(args.layers_b, "--layers-b")
    device = _check_device(args.device)
    from . import distributed
    if distributed.launched_by_torchrun():           # torchrun: one process per rank
        device = distributed.init_from_env(device)
    lead = distributed.rank() == 0                   # rank 0 alone prints and writes
    if args.out is None and not args.list_layers:
        raise CLIError("the following argument is required: --out DIR (the folder for the "
                       "PNG, CSV and JSON files)")
    out = Path(args.out).expanduser() if args.out is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise CLIError(f"--out '{out}' is a file; give a folder (it is created if missing)")
    if spec is None and args.measure not in measures:
        raise CLIError(f"--measure {args.measure} needs {module}, which cannot be imported in "
                       f"this installation; available: {', '.join(measures) or 'none'}")
    if spec is not None:
        from .measures.layer import LayerSimilarity
        measures = {args.measure: lambda m1, m2, **kw: LayerSimilarity(m1, m2, args.measure, **kw)}

    import torch
    from torch.utils.data import DataLoader

    from .images import default_dataset
    from .model import SimilarityModel

    images = _load_images_option(args.images) if args.images else None
    try:
        dataset = default_dataset(n=args.n, size=args.image_size, images=images, seed=args.seed)
    except _ERRORS as err:
        raise CLIError(_one_line(err)) from err

    progress = not args.no_progress and lead
    torch.manual_seed(args.seed)                  # seeded weights (main() forks the RNG)
    model_a = _build_model(name_a, weights_a, progress)
    model_b = _build_model(name_b, weights_b, progress)
    if args.list_layers:
        if lead:
            for name, model in ((name_a, model_a), (name_b, model_b)):
                print(_layer_listing(name, model))
        return 0
    try:
        sim_a = SimilarityModel(model_a, model_name=name_a, layers_to_include=layers_a,
                                device=device)
    except _ERRORS as err:
        raise CLIError(f"--layers-a: {_layer_hint(err)}") from err
    try:
        sim_b = SimilarityModel(model_b, model_name=name_b, layers_to_include=layers_b,
                                device=device)
    except _ERRORS as err:
        raise CLIError(f"--layers-b: {_layer_hint(err)}") from err
    _preflight(sim_a, dataset, "MODEL_A", "--layers-a", args.image_size)
    _preflight(sim_b, dataset, "MODEL_B", "--layers-b", args.image_size)

    try:
        measure = measures[args.measure](sim_a, sim_b, device=device, **options)
    except _ERRORS as err:
        where = "--option" if args.option else f"--measure {args.measure}"
        msg = _one_line(err)
        msg = msg[len(cls_name) + 2:] if msg.startswith(f"{cls_name}: ") else msg
        raise CLIError(f"{where}: {cls_name}: {msg}") from err
    # its own generator: iterating the loader draws a base seed, not from the global RNG
    loader = DataLoader(dataset, batch_size=min(args.batch_size, args.n), shuffle=False,
                        generator=torch.Generator().manual_seed(args.seed))
    if distributed.active():                         # this rank's shard of the same batches
        loader = distributed.shard_loader(dataset, min(args.batch_size, args.n))
    try:
        result = measure.compute(loader, progress=progress)
    except _ERRORS as err:
        if type(err).__name__ == "PlanTooLarge":
            raise CLIError(_plan_refusal(err, args), 2) from err
        raise CLIError(f"comparing {name_a} with {name_b} failed: {_one_line(err)}", 1) from err

    # how the inputs and models were made, so that the JSON alone says how to reproduce it
    result.params["compare"] = {
        "weights": weights_a, "images": str(args.images) if args.images else "shipped photographs",
        "image_size": args.image_size, "seed": args.seed, "batch_size": args.batch_size,
        "distinct_images": dataset.n_distinct_images}
    if not lead:
        return 0
    init = "random init" if weights_a is None else f"weights {weights_a}"
    distinct = dataset.n_distinct_images
    samples = f"{result.n_samples} samples of {distinct} distinct images"
    title = f"{args.measure}: {name_a} vs {name_b}\n({samples}, {args.image_size} px, {init})"
    try:
        written = _write_outputs(result, out, f"{_safe(name_a)}_vs_{_safe(name_b)}_"
                                 f"{args.measure}", title)
    except OSError as err:
        raise CLIError(f"--out '{out}': cannot write the results ({_one_line(err)})", 1) from err
    rows, cols = result.matrix.shape
    print(f"{args.measure}: {name_a} ({rows} layers) x {name_b} ({cols} layers) over {samples} "
          "(augmented views, shuffled)")
    if result.p_value_adjusted is not None:
        significant = int(result.significant(0.05).sum())
        print(f"{significant} of {rows * cols} cells significant at family-wise p < 0.05 "
              f"({args.permutations} permutations)")
    for path in written:
        print(f"wrote {path}")
    return 0


def _plan_refusal(err, args) -> str:
    """The refusal of a semantic CKA plan above --max-minutes, with the CLI's ways to shrink it
    (the plan table itself was already printed)."""
    from .functional.matching import format_seconds as _fmt_seconds
    plan, sug = err.plan, err.suggestions
    ways = []
    if sug.get("n"):
        ways.append(f"--n {sug['n']}")
    if sug.get("max_positions"):
        ways.append(f"--option max_positions={sug['max_positions']} (average-pools the maps; "
                    "an approximation)")
    ways.append(f"a smaller --image-size (now {args.image_size}; positions S grow with its "
                "square)")
    ways.append("fewer or coarser layers with --layers-a/--layers-b (e.g. 'layer3.*,layer4.*')")
    ways.append(f"or a larger --max-minutes (now {args.max_minutes:g})")
    return (f"semantic_cka would need about {_fmt_seconds(plan.total_seconds)} of matching "
            f"({plan.total_pairs} pair problems), above --max-minutes {args.max_minutes:g}; "
            "shrink it with " + "; ".join(ways))


def _write_outputs(result, out: Path, stem: str, title: str | None = None) -> list[Path]:
    """Save CSV + JSON via SimilarityResult.save and the heatmap PNG via SimilarityResult.plot."""
    from .results import atomic_write_bytes
    from matplotlib.figure import Figure          # no pyplot: no GUI backend, no global state
    out.mkdir(parents=True, exist_ok=True)
    written = list(result.save(out / f"{stem}.csv"))
    rows, cols = result.matrix.shape
    fig = Figure(figsize=(max(6.0, 3.0 + 0.38 * cols), max(5.0, 2.0 + 0.38 * rows)))
    ax = fig.add_subplot()
    result.plot(ax=ax, title=title)
    png = out / f"{stem}.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    atomic_write_bytes(png, buffer.getvalue())
    return [png, *written]


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning replacement: ``simtorch-semantic: warning: <one line>``."""
    from .distributed import rank
    if rank() == 0:                                  # under torchrun, rank 0 speaks for all
        text = " ".join(str(message).split())
        print(f"{PROG}: warning: {text}", file=sys.stderr)


def main(argv=None) -> int:
    """Entry point of ``simtorch-semantic``; returns the exit status (see the module docstring)."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as stop:                     # --help / --version
            return stop.code if isinstance(stop.code, int) else 0
        if args.list_measures:
            print(list_measures_text())
            return 0
        if args.command is None:
            raise CLIError(f"the following arguments are required: COMMAND (e.g. {PROG} compare "
                           f"MODEL_A MODEL_B --out DIR), or --list-measures (see '{PROG} --help')")
        if args.command == "compare":
            import torch
            # leave the caller's CPU RNG as it was; print each warning as one line
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return _compare(args)
        raise CLIError(f"unknown command {args.command!r}")  # pragma: no cover
    except CLIError as err:
        if os.environ.get("SIMTORCH_SEMANTIC_TRACEBACK"):
            raise
        print(f"{PROG}: {_rank_prefix()}error: {_one_line(err)}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except _ERRORS as err:
        if os.environ.get("SIMTORCH_SEMANTIC_TRACEBACK"):
            raise
        print(f"{PROG}: {_rank_prefix()}error: {type(err).__name__}: {_one_line(err)}",
              file=sys.stderr)
        return 1
    finally:
        from .distributed import shutdown
        shutdown()                                   # the process group init_from_env made


def _rank_prefix() -> str:
    """``"rank R: "`` under torch.distributed (every rank reports its own error), else ``""``."""
    from .distributed import active, rank
    return f"rank {rank()}: " if active() else ""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
