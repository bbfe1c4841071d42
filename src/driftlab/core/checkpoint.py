"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically.

A nested state (module and optimizer ``state_dict``s, RNG states, counters) is flattened:
tensors go to ``<name>.safetensors`` under slash-joined keys, the rest to ``<name>.json``.
Loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_TENSOR = "__tensor__"


def _encode_key(key: Any) -> str:
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise TypeError(f"checkpoint keys must be str or int, got {key!r}")
    return f"i:{key}" if isinstance(key, int) else f"s:{key}"


def _decode_key(key: str) -> Any:
    return int(key[2:]) if key.startswith("i:") else key[2:]


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        # A copy: views of one storage (flat parameters, shared arrays) must not alias on disk.
        tensors[prefix] = obj.detach().cpu().clone(memory_format=torch.contiguous_format)
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        return {_encode_key(k): _flatten(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        items = [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        return {_decode_key(k): _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` as ``<path>.safetensors`` plus ``<path>.json`` (both atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "", tensors)
    st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
    st_tmp, js_tmp = st.with_name(st.name + ".tmp"), js.with_name(js.name + ".tmp")
    save_file(tensors, str(st_tmp))
    js_tmp.write_text(json.dumps(tree), encoding="utf-8")
    # The JSON is renamed last: a checkpoint counts as written once its JSON exists.
    st_tmp.replace(st)
    js_tmp.replace(js)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a state saved by :func:`save_checkpoint`."""
    path = Path(path)
    js = path.with_suffix(".json")
    if not js.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} (missing {js.name})")
    tensors = load_file(str(path.with_suffix(".safetensors")))
    return _unflatten(json.loads(js.read_text(encoding="utf-8")), tensors)
