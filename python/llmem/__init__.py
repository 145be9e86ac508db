"""llmem: the peak GPU memory of fine-tuning a transformer LLM, before anything runs.

    >>> import llmem
    >>> r = llmem.estimate("facebook/opt-1.3b", batch=4, seq=512, gpu="RTX4090")
    >>> r.peak.device_bytes, r.fits, r.components.activations

Keyword arguments are the CLI's long options with '-' replaced by '_' (see docs/python.md).
Results are read-only views of the JSON the CLI prints: attribute or item access,
``.to_dict()`` and ``.to_json()`` (the CLI's text, byte for byte). Bad input raises
:class:`llmem.Error` (a ``ValueError``) with the CLI's message.
"""

import copy
import enum
import json
import operator
import os
import warnings
from collections.abc import Mapping

from . import _llmem

__all__ = ["Error", "Warning", "Record", "Result", "estimate", "plan", "inspect", "models",
           "request_keys"]
__version__ = _llmem.__version__


class Error(ValueError):
    """Bad input: the message names where it came from and the key.

    ``source`` is what held the bad value ("request", a config file, "model" for a config
    dict) and ``key`` the key, when there is one.
    """

    def __init__(self, message, source=None, key=None):
        super().__init__(message)
        self.source = source
        self.key = key

    def __reduce__(self):
        return (type(self), (str(self), self.source, self.key))


_llmem._set_error_class(Error)


class Warning(UserWarning):  # noqa: A001 (llmem.Warning, as llmem.Error)
    """Something that matters for memory but is not modelled (e.g. a DeepSpeed config key)."""


class Record(Mapping):
    """A read-only JSON object with attribute access (``r.peak.device_bytes``).

    Nested objects are Records, arrays are lists; ``r["key"]`` works too (for keys
    that are not identifiers or that collide with Mapping methods).
    """

    __slots__ = ("_data",)

    def __init__(self, data):
        object.__setattr__(self, "_data", data)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return _wrap(self._data[name])
        except KeyError:
            raise AttributeError(
                f"no field '{name}'; fields: {', '.join(self._data)}") from None

    def __setattr__(self, name, value):
        raise AttributeError("llmem results are read-only")

    def __getitem__(self, key):
        return _wrap(self._data[key])

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __dir__(self):
        return sorted(set(self._data) | set(dir(type(self))))

    def __repr__(self):
        return f"{type(self).__name__}({self._data!r})"

    def __eq__(self, other):
        if isinstance(other, Record):
            return self._data == other._data
        return self._data == other

    __hash__ = None

    def to_dict(self):
        """A deep copy as plain dicts and lists."""
        return copy.deepcopy(self._data)

    def __reduce__(self):
        return (type(self), (self._data,))


class Result(Record):
    """A document the CLI prints with ``--format json``; ``to_json()`` is that text."""

    __slots__ = ("_text",)

    def __init__(self, text):
        super().__init__(json.loads(text))
        object.__setattr__(self, "_text", text)

    def to_json(self):
        """The CLI's JSON text, byte for byte."""
        return self._text

    def __reduce__(self):
        return (type(self), (self._text,))

    @property
    def ranks(self):
        """Per-rank results of a distributed layout ([] for one GPU)."""
        return _wrap(self._data.get("ranks", []))


def _wrap(value):
    if isinstance(value, dict):
        return Record(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _json_default(value):
    """Turns what training scripts hand over into JSON: PEFT/Transformers configs, sets,
    enums (PeftType), torch dtypes, NumPy scalars."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, enum.Enum):
        return value.value
    if type(value).__module__.split(".")[0] == "torch":
        return str(value)  # torch.bfloat16 -> "torch.bfloat16", which llmem reads
    if hasattr(value, "__index__"):
        return operator.index(value)
    if hasattr(value, "__float__"):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _model_value(model):
    if isinstance(model, os.PathLike):
        return os.fspath(model)
    if hasattr(model, "to_dict") and not isinstance(model, dict):
        return model.to_dict()  # a transformers PretrainedConfig
    return model


def _value_text(key, value, source):
    try:
        return json.dumps(value, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise Error(f"{source}: key '{key}': expected a JSON value ({e})", source, key) from None


def _request_text(request, source):
    parts = [json.dumps(k) + ": " + _value_text(k, v, source) for k, v in request.items()]
    return "{" + ", ".join(parts) + "}"


def estimate(model, *, batch=None, seq=None, gpu=None, method=None, **options):
    """Peak memory of one fine-tuning step; the CLI's ``llmem estimate --format json``.

    ``model``: a catalog name ("facebook/opt-1.3b"), a path to a config.json or a
    checkpoint directory, a dict (``config.to_dict()``) or a transformers config.
    ``options``: any other request key (``precision="bf16-mixed"``, ``grad_ckpt=True``,
    ``lora=LoraConfig(...)`` or its dict, ``lora_rank=16``, ``quant="nf4"``, ``dp=8``...).
    None means "the default". Raises llmem.Error.
    """
    request = {"model": _model_value(model)}
    for key, value in (("batch", batch), ("seq", seq), ("gpu", gpu), ("method", method)):
        if value is not None:
            request[key] = value
    for key, value in options.items():
        if value is not None:
            request[key] = value
    text, notes = _llmem.estimate_json(_request_text(request, "request"))
    for note in notes:
        warnings.warn(note, Warning, stacklevel=2)
    return Result(text)


def plan(model, *, gpus, gpu=None, seq=None, **options):
    """The fastest configuration that fits; the CLI's ``llmem plan --format json``.

    ``options``: any other plan key (``gpu_mem``, ``nodes``, ``global_batch``, ``methods``,
    ``allow=["lora", "ckpt"]``, ``margin`` (percent), ``top``, ``max_seq=True``, ``paper=True``,
    ``framework="colossalai"``, ``recipe="my.yaml"`` (a torchtune or LitGPT recipe, whose
    unmodelled keys are issued as warnings), ``precision``...). The result's ``choice`` is None
    when nothing fits. Raises llmem.Error.
    """
    request = {"model": _model_value(model), "gpus": gpus}
    for key, value in (("gpu", gpu), ("seq", seq)):
        if value is not None:
            request[key] = value
    for key, value in options.items():
        if value is not None:
            request[key] = value
    text, notes = _llmem.plan_json(_request_text(request, "plan"))
    for note in notes:
        warnings.warn(note, Warning, stacklevel=2)
    return Result(text)


def inspect(model):
    """The model's normalized description and tensor inventory (``llmem inspect
    --format json``). ``model`` as for estimate()."""
    return Result(_llmem.inspect_json(_value_text("model", _model_value(model), "request")))


def models():
    """The built-in catalog (``llmem models --format json``); ``.models`` lists the
    entries (name, family, params, ...)."""
    return Result(_llmem.models_json())


def request_keys():
    """Every keyword estimate() accepts (besides model)."""
    return list(_llmem.request_keys())
