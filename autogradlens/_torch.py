"""Every read of PyTorch's private autograd attributes, in one place (tests/test_torch_contract.py names each).

A new torch release that renames one of these breaks the contract test loudly, instead of quietly turning
"stale" into "freed" elsewhere. Public code never touches `_saved_*`, `_raw_saved_*`, `_input_metadata`,
`_sequence_nr`, `_version` or PyTorch's error texts directly; it calls the functions here.
"""

from __future__ import annotations

import torch

# PyTorch's error texts we recognise (matched as substrings; tests/test_torch_contract.py provokes each).
STALE_TEXT = "modified by an inplace operation"           # a saved tensor changed in place after it was saved
FREED_TEXTS = ("freed", "second time")                    # saved tensors released by backward()
CHECKPOINT_TEXT = "incompatible with .grad()"             # reentrant checkpoint refuses torch.autograd.grad


def is_stale(err: BaseException) -> bool:
    return STALE_TEXT in str(err)


def is_freed(err: BaseException) -> bool:
    return any(t in str(err) for t in FREED_TEXTS)


def is_checkpoint_refusal(err: BaseException) -> bool:
    return CHECKPOINT_TEXT in str(err)


# ----------------------------------------------------------------------------- graph reading (trace, mirror)

def input_metadata(fn) -> tuple:
    """Per forward output of node `fn`: an object with `shape`, `dtype`, `device`."""
    return fn._input_metadata


def sequence_nr(fn) -> int:
    return fn._sequence_nr()


def version(t: torch.Tensor) -> int:
    return t._version


def saved_names(fn, cache: dict) -> tuple[list, list]:
    """(tensor slot names, other attribute names) of a node; C++ node types are cached."""
    t = type(fn)
    hit = cache.get(t)
    if hit is not None:
        return hit
    names = dir(fn)
    raw = {a[len("_raw_saved_"):] for a in names if a.startswith("_raw_saved_")}
    slots = [a[len("_saved_"):] for a in names if a.startswith("_saved_") and a[len("_saved_"):] in raw]
    other = [a[len("_saved_"):] for a in names if a.startswith("_saved_") and a[len("_saved_"):] not in raw]
    if isinstance(fn, torch.autograd.function.BackwardCFunction):  # custom Function / compiled region (a ctx)
        slots.append("saved_tensors")
    res = (slots, other)
    if t.__module__ == "builtins" or "torch._C" in t.__module__:
        cache[t] = res
    return res


def saved_attr(fn, name: str):
    """A non-tensor saved value (`_saved_<name>`): ints, floats, tuples, strings. Readable after backward."""
    return getattr(fn, "_saved_" + name)


def saved_value(fn, name: str):
    """The saved tensor (or tuple of tensors/None) `name` of node `fn`; raises PyTorch's RuntimeError when it was
    freed by backward() or changed in place (tell them apart with `is_freed` / `is_stale`)."""
    if name == "saved_tensors":
        return tuple(fn.saved_tensors)
    return getattr(fn, "_saved_" + name)


def read_slot(fn, name: str):
    """-> list of (slot name, tensor|None, state, reason) for one `_saved_<name>` field. Never raises."""
    try:
        v = saved_value(fn, name)
    except RuntimeError as e:
        return _unreadable(fn, name, e)
    if name == "saved_tensors":
        return [(f"saved_tensors[{i}]", x, "live", None if x is not None else "none") for i, x in enumerate(v)]
    if isinstance(v, tuple):
        return [(f"{name}[{i}]", x, "live", None if x is not None else "none") for i, x in enumerate(v)]
    return [(name, v, "live", None if v is not None else "none")]


def _unreadable(fn, name, err):
    state = "stale" if is_stale(err) else "freed"
    try:  # the SavedTensor handles: how many slots, and (for a stale one) its data
        raw = getattr(fn, "_raw_saved_" + name.removeprefix("saved_"))
    except (RuntimeError, AttributeError):  # IndexBackward0, custom Functions: released with the values
        raw = None
    if isinstance(raw, (tuple, list)):
        names, raws = [f"{name}[{i}]" for i in range(len(raw))], list(raw)
    else:
        names, raws = ([f"{name}[0]"] if name == "saved_tensors" else [name]), [raw]
    out = []
    for n, r in zip(names, raws):
        data = None
        if state == "stale" and r is not None:
            try:
                data = r.data
            except RuntimeError:
                data = None
        out.append((n, data, state, None))
    return out


# ----------------------------------------------------------------------------- hooks (watch)

def current_node():
    """The autograd node being executed (inside hooks during backward), else None."""
    return torch._C._current_autograd_node()
