"""Every read of PyTorch's private autograd attributes, in one place (tests/test_torch_contract.py names each).

A new torch release that renames one of these breaks the contract test loudly, instead of quietly turning
"stale" into "freed" elsewhere. Public code never touches `_saved_*`, `_raw_saved_*`, `_input_metadata`,
`_sequence_nr`, `_version` or PyTorch's error texts directly; it calls the functions here.
"""

from __future__ import annotations

import sys
import threading
from typing import NamedTuple

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


def checkpoint_function(fn):
    """The function a reentrant checkpoint region runs again in its backward (the ctx's ``run_function``), or None
    for any other node."""
    return getattr(fn, "run_function", None) if type(fn).__name__ == "CheckpointFunctionBackward" else None


def is_custom_function(fn) -> bool:
    """A node made by a Python ``torch.autograd.Function`` (the user's, a library's, a compiled region's)."""
    return isinstance(fn, torch.autograd.function.BackwardCFunction)


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
    if is_custom_function(fn):  # custom Function / compiled region (a ctx)
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


# ----------------------------------------------------------------------------- storages (trace's ledger)

_NO_STORAGE = {torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc}


def storage_of(t: torch.Tensor) -> tuple:
    """(data_ptr, storage nbytes, None) for a tensor with one plain storage; (None, None, reason) for layouts
    whose memory cannot be measured that way: sparse (no single storage), nested, meta (no memory)."""
    layout = t.layout
    if layout in _NO_STORAGE:
        return None, None, (f"a {str(layout).removeprefix('torch.')} tensor has no single storage: "
                            "its bytes and storage sharing are not measured")
    if t.is_meta:
        return None, None, ("a meta tensor holds no memory: nbytes is its size on a real device; "
                            "storage sharing is not measured")
    if t.is_nested:
        return None, None, "a nested tensor has no single plain storage: storage sharing is not measured"
    try:
        st = t.untyped_storage()
        return st.data_ptr(), st.nbytes(), None
    except (NotImplementedError, RuntimeError) as e:  # tensor subclasses, functional/fake tensors
        return None, None, f"its storage cannot be read ({e}): bytes and storage sharing are not measured"


# ----------------------------------------------------------------------------- hooks (watch)

def current_node():
    """The autograd node being executed (inside hooks during backward), else None."""
    return torch._C._current_autograd_node()


def graph_task_id() -> int:
    """PyTorch's id of the backward()/grad() call being run (inside hooks during backward), else -1."""
    return torch._C._current_graph_task_id()


def queue_callback(fn) -> None:
    """Run `fn` when the graph task being run finishes (call from a hook during backward; not after an error)."""
    torch.autograd.Variable._execution_engine.queue_callback(fn)


_ENGINE_CODE = torch.autograd.graph._engine_run_backward.__code__  # backward() and grad() both call it


class EngineCall(NamedTuple):
    roots: tuple        # the tensors (or GradientEdges) differentiated
    accumulate: bool    # True for backward() (gradients into .grad), False for torch.autograd.grad()
    nested: bool        # called while another backward of the same thread runs (a reentrant checkpoint)


def engine_call(tid: int, nested: bool = True) -> EngineCall | None:
    """The backward()/grad() call whose hooks are running, read from PyTorch's own Python frame (the one that
    calls the C++ engine), or None when there is none (the engine called from C++, compiled autograd).

    Hooks run in the calling thread (CPU) or in PyTorch's device threads (CUDA); `tid` is the calling thread
    when no frame is found here. A call found under another one on its thread is nested; ``nested=False`` skips
    looking for one (the caller knows no other backward runs)."""
    here = threading.get_ident() == tid
    frames = _engine_frames(sys._getframe(1), nested)
    if frames:
        is_nested = len(frames) > 1 or not here  # on a device thread: called from a node
    else:
        frame = None if here else sys._current_frames().get(tid)
        frames = _engine_frames(frame, nested) if frame is not None else []
        if not frames:
            return None
        is_nested = len(frames) > 1
    loc = frames[0].f_locals
    kwargs = loc.get("kwargs") or {}
    return EngineCall(tuple(loc.get("t_outputs") or ()), bool(kwargs.get("accumulate_grad", True)), is_nested)


def _engine_frames(f, all_of_them: bool) -> list:
    out = []
    while f is not None:
        if f.f_code is _ENGINE_CODE:
            out.append(f)
            if not all_of_them:
                break
        f = f.f_back
    return out


_TLS_KEY = "autogradlens.watch"  # stashed in the watching thread; PyTorch copies it to the threads serving its backward
_INPLACE_HINT = {False: " Hint: enable anomaly detection to find the operation that failed to compute its gradient, "
                        "with torch.autograd.set_detect_anomaly(True, check_nan=False).",
                 True: " Hint: the backtrace further above shows the operation that failed to compute its gradient. "
                       "The variable in question was changed in there or anywhere later. Good luck!"}


def mark_thread(on: bool) -> None:
    """Mark (or unmark) the calling thread as the watching one; `in_marked_thread()` is True there and in the
    autograd threads running its backward passes (PyTorch propagates this thread-local state)."""
    _stash(_TLS_KEY, True if on else None)


def in_marked_thread() -> bool:
    return torch._C._is_key_in_tls(_TLS_KEY) and bool(torch._C._get_obj_in_tls(_TLS_KEY))


_REPLAY_KEY = "autogradlens.replay"  # how many of lens's own runs over a graph (engine.run) the thread is inside


def replay_mark(on: bool) -> None:
    """Enter (True) or leave (False) lens's own run over a graph in this thread: `in_replay()` is True inside, also in
    the autograd threads serving a backward PyTorch runs from it (a reentrant checkpoint's inner one)."""
    depth = (torch._C._get_obj_in_tls(_REPLAY_KEY) or 0) if torch._C._is_key_in_tls(_REPLAY_KEY) else 0
    depth = depth + 1 if on else max(depth - 1, 0)
    _stash(_REPLAY_KEY, depth or None)


def in_replay() -> bool:
    return torch._C._is_key_in_tls(_REPLAY_KEY) and bool(torch._C._get_obj_in_tls(_REPLAY_KEY))


def _stash(key: str, value) -> None:
    """Set thread-local `key` (PyTorch's TLS, which it copies to the threads serving a backward); None removes it."""
    if value is not None:
        torch._C._stash_obj_in_tls(key, value)
    elif torch._C._is_key_in_tls(key):
        if _REMOVE is None:  # torch < 2.13 cannot remove a key: it stays, with a false value
            torch._C._stash_obj_in_tls(key, False)
        else:
            _REMOVE(key)


_REMOVE = getattr(torch._C, "_remove_obj_from_tls", None)


def unpack_hook(fn, slot: str):
    """The unpack function of saved slot `slot` of node `fn` (None without hooks; first one of a tuple slot)."""
    raw = fn._raw_saved_tensors if slot == "saved_tensors" else getattr(fn, "_raw_saved_" + slot)
    if isinstance(raw, tuple):
        raw = next((r for r in raw if r is not None), None)
    return None if raw is None else raw.unpack_hook


def read_saved(fn, slot: str) -> None:
    """Read (unpack) one saved slot, as the engine would; errors of freed or stale slots propagate."""
    if slot == "saved_tensors":
        fn.saved_tensors  # noqa: B018 - reading unpacks
    else:
        getattr(fn, "_saved_" + slot)


def inplace_error(t: torch.Tensor, producer: str | None, output_nr: int, saved_version: int) -> str:
    """PyTorch's own text for a saved tensor changed in place (torch/csrc/autograd/saved_variable.cpp):
    `producer` is the node type PyTorch names (the saving node for a saved output, else the tensor's grad_fn)."""
    name = None if producer is None else _op_name(producer) if names_ops() else producer
    which = "" if name is None else f", which is output {output_nr} of {name},"
    return (f"one of the variables needed for gradient computation has been modified by an inplace operation: "
            f"[{t.type()} [{', '.join(map(str, t.shape))}]]{which} is at version {t._version}; expected version "
            f"{saved_version} instead.{_INPLACE_HINT[torch.is_anomaly_enabled()]}")


_NAMES_OPS: list = []


def names_ops() -> bool:
    """Does PyTorch's in-place error name a node by its op ("output 0 of Exp", torch 2.13) rather than by its
    type ("output 0 of ExpBackward0", torch 2.11)? Asked once, in a new thread (no saved-tensor hooks there)."""
    if not _NAMES_OPS:
        text = []

        def probe():
            w = torch.zeros(1, requires_grad=True)
            a = w.exp()
            a.add_(1)
            try:
                a.sum().backward()
            except RuntimeError as e:
                text.append(str(e))

        t = threading.Thread(target=probe)
        t.start()
        t.join()
        _NAMES_OPS.append(not any("of ExpBackward0," in x for x in text))
    return _NAMES_OPS[0]


def _op_name(node_type: str) -> str:
    head, sep, tail = node_type.rpartition("Backward")
    return head if sep and tail.isdigit() or sep and not tail else node_type


def dense(t: torch.Tensor) -> bool:
    """A plain strided tensor (the fast check; `measurable` says why not)."""
    return t.layout == _STRIDED and not t.is_nested


_STRIDED = torch.strided


def measurable(t: torch.Tensor) -> str | None:
    """None when `t` is a plain strided tensor with storage; else why watch cannot measure it."""
    if t.is_nested:
        return "nested tensor"
    if t.layout != torch.strided:
        return f"{str(t.layout).removeprefix('torch.')} tensor"
    if torch._C._functorch.is_functorch_wrapped_tensor(t):
        return "torch.func transform (functorch wrapper)"
    if t.device.type == "meta":
        return "meta tensor"
    return None


# Where modules, tensors and optimizers keep their hooks (hook id -> function); `remove_hook` sweeps them.
HOOK_DICTS = {"forward_pre": ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"),
              "forward": ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"),
              "tensor": ("_backward_hooks",), "post_accumulate": ("_post_accumulate_grad_hooks",),
              "step_pre": ("_optimizer_step_pre_hooks",), "step_post": ("_optimizer_step_post_hooks",)}


def remove_hook(owner, kind: str, fn) -> None:
    """Remove every registration of hook `fn` from `owner`'s hook dicts of `kind`, whatever became of its handle
    (an interrupt can land between a register call and keeping its handle). Idempotent."""
    names = HOOK_DICTS[kind]
    main = getattr(owner, names[0], None) or {}
    ids = [k for k, v in list(main.items()) if v is fn]
    for name in names:
        d = getattr(owner, name, None)
        if d:
            for k in ids:
                d.pop(k, None)


_SKIPPED: set = set()  # code objects dynamo has been told to run as they are


def no_compile(fn):
    """`fn` (a hook) as torch.compile's dynamo never traces it nor what it calls: its code object is marked to be
    run as it is (no wrapper, so no cost per call); ``torch.compiler.disable`` (a wrapper, ~1 us a call) where
    that is not possible. Hooks run inside compiled code's backward, and dynamo tracing them broke them."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return torch.compiler.disable(fn, recursive=True)
    if code not in _SKIPPED:
        try:
            from torch._dynamo.eval_frame import set_code_exec_strategy
            from torch._dynamo.types import FrameAction, FrameExecStrategy

            set_code_exec_strategy(code, FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP))
        except (ImportError, AttributeError, TypeError):
            return torch.compiler.disable(fn, recursive=True)
        _SKIPPED.add(code)
    return fn


def saved_hooks_enabled() -> bool:
    """False inside a torch.func transform (it refuses saved-tensor hooks: pushing them would raise)."""
    return torch._C._autograd._saved_tensors_hooks_is_enabled()


def top_saved_hooks():
    """The innermost (pack, unpack) saved-tensor hooks of this thread, or None."""
    return torch._C._autograd._top_saved_tensors_default_hooks(False)


def pop_saved_hooks() -> None:
    torch._C._autograd._pop_saved_tensors_default_hooks()


def push_saved_hooks(pack, unpack) -> None:
    torch._C._autograd._push_saved_tensors_default_hooks(pack, unpack)


# ----------------------------------------------------------------------------- calling nodes (engine.run)

def call_node(fn, grads: list) -> tuple:
    """Node `fn`'s backward on `grads` (one per forward output, None where undefined), as the engine calls it but
    without its hooks: a C++ node is callable; a custom ``autograd.Function`` node runs its ``backward`` through
    ``apply``, with zeros for undefined gradients (PyNode's default), its values mapped to the tensor inputs.
    Returns one gradient (or None) per ``next_functions`` slot."""
    nexts = fn.next_functions
    n = len(nexts)
    if not is_custom_function(fn):
        out = fn(*grads)
        return out if isinstance(out, tuple) else (out,)
    # PyNode materializes undefined gradients as zeros unless ctx.set_materialize_grads(False) (not readable from
    # Python, so always: the same numbers, only a backward that tests for None sees zeros instead)
    grads = [torch.zeros(tuple(m.shape), dtype=m.dtype, device=m.device) if g is None else g
             for g, m in zip(grads, fn._input_metadata)]
    out = fn.apply(*grads)
    out = out if isinstance(out, tuple) else (out,)
    # backward returns one value per forward input, next_functions has one slot per tensor input: the inputs that
    # need a gradient, in order, are the slots with an edge (PyNode maps them with is_variable_input)
    need = [i for i, x in enumerate(fn.needs_input_grad) if x]
    slots = [k for k, (f, _) in enumerate(nexts) if f is not None]
    if len(out) == len(fn.needs_input_grad) and len(need) == len(slots):
        res = [None] * n
        for i, k in zip(need, slots):
            res[k] = out[i]
        return tuple(res)
    return tuple(out[:n]) + (None,) * (n - len(out))


def tensor_hooks(t: torch.Tensor) -> list:
    """The Python hooks of tensor `t` (``t.register_hook``), in the order they run."""
    hooks = getattr(t, "_backward_hooks", None)
    return list(hooks.values()) if hooks else []
