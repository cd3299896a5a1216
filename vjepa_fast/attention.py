"""One switch for the attention implementation used by every block in the package.

``VJEPA_FAST_ATTN`` (or :func:`set_attention_backend`) picks:

* ``auto``: PyTorch SDPA with its own backend choice;
* ``math``, ``flash``, ``efficient``, ``cudnn``: one SDPA backend, forced;
* ``flash_attn``: the flash-attn package (``flash_attn_func``; CUDA, fp16/bf16), when installed;
* ``xformers``: ``xformers.ops.memory_efficient_attention``, when installed;
* ``tuned``: for each call, the backend measured fastest at its shape (below).

The choice is read once into a module global, so no context manager wraps the call unless an SDPA
backend is forced, and then it is the non-deprecated ``torch.nn.attention.sdpa_kernel``, which
torch.compile understands. V1 attention is never masked and never causal.

The ``tuned`` backend
---------------------
The fastest backend depends on the card, the dtype, the head dim and the length, and V-JEPA's are
unusual: head dims 64 (ViT-L), 80 (ViT-H) and 24 (the V1 predictor: 384 wide, 16 heads; 32 with
V2's 12), 1568 tokens for the target, about 100-370 for the context encoder and 1100-1200 for the
predictor. On an H100 (engineering.md) cuDNN runs 1568 x 64 at 312 TFLOP/s and flash at 204, but
nothing is published for d = 80 or 24 (FA2 pads 80 to 96, FA3 pads 24 to 64), so the choice is
measured: :func:`tune_attention` times every backend that runs at each shape (forward only for
the no-grad target, forward + backward otherwise) and keeps the fastest in a table keyed by ``(device type, dtype, heads, head_dim, length)``;
:func:`save_attention_table` / :func:`load_attention_table` (or ``VJEPA_FAST_ATTN_TABLE=path``,
read at import) reuse a measured table in later runs. A call then uses:

1. the entry of its length, when that length was measured;
2. otherwise, and whenever the length is symbolic, the *group default* of
   ``(device type, dtype, heads, head_dim)``: the backend with the least summed time over the
   group's ``dynamic`` shapes (those whose length changes every step: the context encoder's and the
   predictor's), or over all its shapes when none is tagged dynamic;
3. ``auto`` when the group was never measured, and for cross-attention (query and key lengths
   differ: the table holds self-attention timings).

Rule 2 is what keeps the compiled student at one graph: its token counts are symbols
(``compile.py``), and choosing by their value would guard on it (a recompile per length, or an
error with the dims marked dynamic). Under torch.compile the length is therefore only compared with
``statically_known_true``, which is True for a static length (the target encoder, compiled with
``dynamic=False``, gets its exact entry) and False, without a guard, for a symbol; dynamo reports
symbolic ints as plain ``int``, so ``isinstance(length, torch.SymInt)`` alone cannot tell. Eager
context lengths also change every step, so they use rule 2 as well (but for a step whose length
happens to equal a measured one), as the compiled student does. A lookup is a couple of dict gets on Python ints (no host sync). The
table is a module global that a compiled graph guards on: changing it recompiles at the next call.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_BACKENDS = {
    "auto": None,
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
EXTERNAL_BACKENDS = {"flash_attn": "flash_attn", "xformers": "xformers"}  # name -> package
TUNED = "tuned"
BACKENDS = {**SDPA_BACKENDS, **{name: None for name in EXTERNAL_BACKENDS}, TUNED: None}

_backend: str = "auto"


def backend_installed(name: str) -> bool:
    package = EXTERNAL_BACKENDS.get(name)
    return package is None or importlib.util.find_spec(package) is not None


def set_attention_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    if not backend_installed(name):
        raise ValueError(f"attention backend {name!r} needs the {EXTERNAL_BACKENDS[name]!r} package, which is not installed")
    _backend = name


def get_attention_backend() -> str:
    return _backend


@contextlib.contextmanager
def attention_backend(name: str):
    """Temporarily switch the backend (tests, benchmarks)."""
    previous = _backend
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def _external(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Both packages take [B, L, heads, head_dim]; ours is [B, heads, L, head_dim].
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if name == "flash_attn":
        from flash_attn import flash_attn_func  # noqa: PLC0415

        out = flash_attn_func(q, k, v)
    else:
        from xformers.ops import memory_efficient_attention  # noqa: PLC0415

        out = memory_efficient_attention(q, k, v)
    return out.transpose(1, 2)


def _dispatch(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if name in EXTERNAL_BACKENDS:
        return _external(name, q, k, v)
    forced = SDPA_BACKENDS[name]
    if forced is None:
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel([forced]):
        return F.scaled_dot_product_attention(q, k, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Non-causal, unmasked scaled-dot-product attention on [B, heads, L, head_dim] tensors, with
    the default 1/sqrt(head_dim) scale. ``backend`` overrides the global switch for one call."""
    name = backend or _backend
    if name == TUNED:
        name = tuned_backend(q, k)
    return _dispatch(name, q, k, v)


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device`` here (tests and benchmarks iterate over these)."""
    device = torch.device(device)
    if device.type != "cuda":
        return ["auto", "math", "flash"]  # PyTorch's CPU SDPA has a math and a flash kernel
    names = ["auto", "math", "flash", "efficient", "cudnn"]
    return names + [n for n in EXTERNAL_BACKENDS if backend_installed(n)]


# ------------------------------------------------------------------------------------------------
# The tuned table
# ------------------------------------------------------------------------------------------------

Group = tuple  # (device type: str, dtype: torch.dtype, heads: int, head_dim: int)

_exact: dict[Group, dict[int, str]] = {}  # group -> {measured length: backend}
_default: dict[Group, str] = {}  # group -> backend for every other (or symbolic) length
_measured_on: dict[str, str] = {}  # provenance, written to the JSON file

TABLE_FORMAT = "vjepa_fast.attention_table"
TABLE_VERSION = 1
_DTYPES = {name: getattr(torch, name) for name in ("float32", "float16", "bfloat16", "float64")}


def _known_true(expr) -> bool:
    # Imported here: symbolic_shapes pulls in sympy (~0.5 s), and only a compiling or symbolically
    # traced call (which has imported it already) gets here.
    from torch.fx.experimental.symbolic_shapes import statically_known_true  # noqa: PLC0415

    return statically_known_true(expr)


def tuned_backend(q: torch.Tensor, k: torch.Tensor | None = None) -> str:
    """The backend ``tuned`` runs for these inputs (rules 1-3 of the module docstring)."""
    length = q.shape[-2]
    kv_length = length if k is None else k.shape[-2]
    group = (q.device.type, q.dtype, q.shape[-3], q.shape[-1])
    exact = _exact.get(group)
    if torch.compiler.is_compiling() or isinstance(length, torch.SymInt):
        # Never branch on a symbol's value: these comparisons are False (and guard nothing) unless
        # the length is a compile-time constant.
        if not _known_true(length == kv_length):
            return "auto"
        if exact:
            for measured, name in exact.items():
                if _known_true(length == measured):
                    return name
    else:
        if length != kv_length:
            return "auto"
        if exact:
            name = exact.get(length)
            if name is not None:
                return name
    return _default.get(group, "auto")


def _check_backend_name(name: object) -> str:
    if not isinstance(name, str) or name not in BACKENDS or name == TUNED:
        choices = sorted(n for n in BACKENDS if n != TUNED)
        raise ValueError(f"unknown attention backend {name!r}; a table entry names one of {choices}")
    if not backend_installed(name):
        raise ValueError(f"attention backend {name!r} needs the {EXTERNAL_BACKENDS[name]!r} package, "
                         "which is not installed")  # fmt: skip
    return name


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(_DTYPES)}")


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def _group(device: torch.device | str, dtype: torch.dtype | str, heads: int, head_dim: int) -> Group:
    heads, head_dim = _positive_int(heads, "heads"), _positive_int(head_dim, "head_dim")
    return (torch.device(device).type, _parse_dtype(dtype), heads, head_dim)


def set_tuned_backend(
    device: torch.device | str, dtype: torch.dtype | str, heads: int, head_dim: int, length: int | None,
    name: str,
) -> None:
    """Set one table entry by hand; ``length=None`` sets the group default (rule 2)."""
    group = _group(device, dtype, heads, head_dim)
    name = _check_backend_name(name)
    if length is None:
        _default[group] = name
    else:
        _exact.setdefault(group, {})[_positive_int(length, "length")] = name


def clear_attention_table() -> None:
    _exact.clear()
    _default.clear()
    _measured_on.clear()


def attention_table() -> dict:
    """The table in the JSON form :func:`save_attention_table` writes (a copy)."""
    entries = []
    for group in sorted(set(_exact) | set(_default), key=lambda g: (g[0], _dtype_name(g[1]), g[2], g[3])):
        device_type, dtype, heads, head_dim = group
        base = {"device": device_type, "dtype": _dtype_name(dtype), "heads": heads, "head_dim": head_dim}
        for length, name in sorted(_exact.get(group, {}).items()):
            entries.append({**base, "length": length, "backend": name})
        if group in _default:
            entries.append({**base, "length": None, "backend": _default[group]})
    return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "measured_on": dict(_measured_on),
            "entries": entries}  # fmt: skip


def save_attention_table(path: str | os.PathLike) -> None:
    table = attention_table()
    entries = ",\n".join("  " + json.dumps(e) for e in table.pop("entries"))
    head = json.dumps(table)[:-1]  # one entry per line: the file is meant to be read and diffed
    body = f"[\n{entries}\n]" if entries else "[]"
    Path(path).write_text(f'{head}, "entries": {body}}}\n')


def load_attention_table(path: str | os.PathLike, merge: bool = False) -> None:
    """Install the table saved at ``path``: it replaces the current one (``merge=True``: its entries
    are added over it). Nothing is installed unless every entry is valid."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON attention table ({e})") from None
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise ValueError(f"{path}: not an attention table (expected \"format\": {TABLE_FORMAT!r})")
    if data.get("version") != TABLE_VERSION:
        raise ValueError(f"{path}: attention table version {data.get('version')!r}; "
                         f"this code reads {TABLE_VERSION}")  # fmt: skip
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: \"entries\" must be a list")
    exact: dict[Group, dict[int, str]] = {}
    default: dict[Group, str] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be an object, got {entry!r}")
        missing = {"device", "dtype", "heads", "head_dim", "length", "backend"} - set(entry)
        if missing:
            raise ValueError(f"{where}: missing {sorted(missing)}")
        where += (f" ({entry['device']}/{entry['dtype']} heads={entry['heads']} head_dim={entry['head_dim']} "
                  f"length={'default' if entry['length'] is None else entry['length']})")  # fmt: skip
        try:
            if not isinstance(entry["device"], str):
                raise ValueError(f"device must be a device type string, got {entry['device']!r}")
            group = _group(entry["device"], entry["dtype"], entry["heads"], entry["head_dim"])
            length = None if entry["length"] is None else _positive_int(entry["length"], "length")
            name = _check_backend_name(entry["backend"])
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"{where}: {e}") from None
        if (length is None and group in default) or (length is not None and length in exact.get(group, {})):
            raise ValueError(f"{where}: duplicate key")
        if length is None:
            default[group] = name
        else:
            exact.setdefault(group, {})[length] = name
    if not merge:
        clear_attention_table()
    for group, lengths in exact.items():
        _exact.setdefault(group, {}).update(lengths)
    _default.update(default)
    measured_on = data.get("measured_on")
    if isinstance(measured_on, dict):
        _measured_on.update({str(k): str(v) for k, v in measured_on.items()})


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------

class AttnShape(NamedTuple):
    """One attention call to time. A plain ``(batch, heads, length, head_dim)`` tuple is accepted
    wherever an AttnShape is."""

    batch: int
    heads: int
    length: int
    head_dim: int
    dynamic: bool = False  # the length changes every step: it counts towards the group default
    backward: bool | None = None  # None: the tuner's ``fwd_bwd``
    role: str = ""


#: Official V1 ViT-L/16 16x224 mean (context, target) lengths after the collator's batch-min
#: truncation, short-range then long-range mask (engineering.md; official_vjepa.md Appendix A's
#: re-implementation gives 367/750 and 102/1100).
VJEPA_MASK_LENGTHS = ((364, 746), (103, 1101))

#: FLOP convention of the reports (FlashAttention's, engineering.md).
FLOPS_CONVENTION = ("forward 4*batch*heads*length^2*head_dim (QK^T and AV); backward 2.5x forward "
                    "(it recomputes QK^T), so forward+backward 3.5x")  # fmt: skip


def vjepa_attention_shapes(
    encoder_heads: int, encoder_head_dim: int, predictor_heads: int, predictor_head_dim: int, batch: int,
    num_tokens: int = 1568, mask_lengths: Sequence[tuple[int, int]] = VJEPA_MASK_LENGTHS,
) -> list[AttnShape]:
    """The self-attention calls of one V-JEPA step: the target encoder on all ``num_tokens``
    (static length, forward only: it runs without grad), then per mask config the context encoder
    on Kc tokens and the predictor on Kc + Kt (dynamic lengths, forward + backward)."""
    shapes = [AttnShape(batch, encoder_heads, num_tokens, encoder_head_dim, False, False, "target")]
    for i, (kc, kt) in enumerate(mask_lengths):
        shapes.append(AttnShape(batch, encoder_heads, kc, encoder_head_dim, True, True, f"context[{i}]"))
        pred = AttnShape(batch, predictor_heads, kc + kt, predictor_head_dim, True, True, f"predictor[{i}]")
        shapes.append(pred)
    return shapes


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        module = getattr(torch, device.type, None)
        if module is not None and hasattr(module, "synchronize"):
            module.synchronize()


def _median_ms(fn, device: torch.device, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    _synchronize(device)
    if device.type == "cuda":
        # Events bracket the kernels only: no sync per rep, so host-side launch latency that
        # overlaps the previous rep's kernels is not counted.
        events = [tuple(torch.cuda.Event(enable_timing=True) for _ in "se") for _ in range(reps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            _synchronize(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _call(name: str, q, k, v, grad_out, backward: bool):
    fn = _plain_attention if name == "plain" else lambda q, k, v: attention(q, k, v, backend=name)
    if not backward:
        with torch.no_grad():
            return fn(q, k, v), ()
    out = fn(q, k, v)
    return out, torch.autograd.grad(out, (q, k, v), grad_out)


def _plain_attention(q, k, v):
    # Three plain ops in the input dtype: the yardstick of the parity check. SDPA's math backend
    # upcasts half inputs, so its own error would be a single final rounding, which no fused
    # half-precision kernel (bf16 probabilities, fp32 accumulators) can match.
    return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v


def _mismatch(got, ref, base) -> str | None:
    """FlashAttention's test rule: error against the float32 math backend at most twice (output) or
    three times (gradients, whose kernels differ more in accumulation order) that of plain attention
    in the same dtype, plus float32 noise. A safety net against broken kernels (silently wrong
    results are gross), not a precision contest."""
    for what, factor, g, r, b in zip(("output", "grad q", "grad k", "grad v"), (2, 3, 3, 3), got, ref, base):
        err = (g.float() - r).abs().max().item()
        bound = factor * (b.float() - r).abs().max().item() + 1e-4 * r.abs().max().item() + 1e-6
        if not err <= bound:  # also catches NaN
            return f"{what} differs from the float32 math backend by {err:.3g} > {bound:.3g}"
    return None


def _failure(e: BaseException, caught: Iterable[warnings.WarningMessage]) -> str:
    lines = [f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"]
    # SDPA says why a forced backend cannot run in warnings, before it raises "No available kernel".
    lines += [str(w.message).strip().splitlines()[0] for w in caught][:4]
    return " | ".join(dict.fromkeys(lines))[:600]


def _tune_shape(shape: AttnShape, names: list[str], device: torch.device, dtype: torch.dtype,
                backward: bool, warmup: int, reps: int, check: bool) -> dict:
    gen = torch.Generator(device=device).manual_seed(shape.length * 1009 + shape.head_dim)
    # Laid out as the blocks' qkv projection leaves them ([B, L, 3, heads, head_dim] permuted):
    # some backends copy non-contiguous inputs, and that copy is part of their cost in the model.
    qkv = torch.randn(shape.batch, shape.length, 3, shape.heads, shape.head_dim, generator=gen, device=device,
                      dtype=dtype).requires_grad_(backward)  # fmt: skip
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    grad_out = torch.randn(q.shape, generator=gen, device=device, dtype=dtype) if backward else None
    if check:
        ref_in = [t.detach().float().requires_grad_(backward) for t in (q, k, v)]
        ref_out, ref_grads = _call("math", *ref_in, None if grad_out is None else grad_out.float(), backward)
        ref = [t.detach() for t in (ref_out, *ref_grads)]
        del ref_in, ref_out, ref_grads
        base_out, base_grads = _call("plain", q, k, v, grad_out, backward)
        base = [t.detach() for t in (base_out, *base_grads)]
        del base_out, base_grads
    flop = 4.0 * shape.batch * shape.heads * shape.length**2 * shape.head_dim * (3.5 if backward else 1.0)
    ms: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name in names:
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out, grads = _call(name, q, k, v, grad_out, backward)
                _synchronize(device)  # asynchronous kernel errors surface here, not in the timing
            if check:
                bad = _mismatch([out, *grads], ref, base)
                if bad:
                    skipped[name] = bad
                    continue
            del out, grads
            ms[name] = _median_ms(lambda: _call(name, q, k, v, grad_out, backward), device, warmup, reps)
        except Exception as e:  # noqa: BLE001 - a backend that cannot run this shape is skipped, with why
            skipped[name] = _failure(e, caught)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    chosen = min(ms, key=ms.__getitem__) if ms else None
    return {
        **shape._asdict(), "backward": backward, "mode": "fwd+bwd" if backward else "fwd",
        "gflop": flop / 1e9, "ms": ms, "tflops": {n: flop / (t * 1e-3) / 1e12 for n, t in ms.items()},
        "skipped": skipped, "chosen": chosen,
    }


def tune_attention(
    shapes: Iterable[AttnShape | tuple[int, int, int, int]],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    backends: Sequence[str] | None = None,
    warmup: int = 3,
    reps: int = 10,
    fwd_bwd: bool = True,
    check: bool = True,
    install: bool = True,
) -> dict:
    """Time each backend at each shape and (``install``) put the fastest into the ``tuned`` table.

    ``shapes``: :class:`AttnShape` (or ``(batch, heads, length, head_dim)``) tuples, e.g. from
    :func:`vjepa_attention_shapes`. ``backends``: default :func:`available_backends`. A backend
    that raises at a shape, or (``check``) whose output or gradients fail the parity rule of
    :func:`_mismatch` against the float32 math backend, is skipped there, with the reason in the
    report. The check holds a few ``batch*heads*length**2`` float32 buffers at a time (about 4 GB
    each at batch 24 x 16 heads x 1568 tokens). Times are the median of ``reps`` calls after
    ``warmup`` (CUDA events on a GPU, ``time.perf_counter`` elsewhere), forward + backward unless
    ``fwd_bwd=False`` or the shape says otherwise. The table key ignores the batch: a key measured
    twice keeps the last result.

    Returns a JSON-able report: per shape, ms and TFLOP/s per backend (:data:`FLOPS_CONVENTION`),
    the skipped ones with why, and the choice; per ``(heads, head_dim)`` group, the summed times
    behind the group default (module docstring, rule 2).
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = _parse_dtype(dtype)
    names = list(available_backends(device) if backends is None else backends)
    if not names:
        raise ValueError("no backends to time")
    for name in names:
        _check_backend_name(name)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    _positive_int(reps, "reps")
    unique = list(dict.fromkeys(s if isinstance(s, AttnShape) else AttnShape(*s) for s in shapes))
    if not unique:
        raise ValueError("no shapes to time")
    for s in unique:
        for field in ("batch", "heads", "length", "head_dim"):
            _positive_int(getattr(s, field), f"{field} of {tuple(s)}")

    rows = []
    for s in unique:
        backward = fwd_bwd if s.backward is None else bool(s.backward)
        rows.append(_tune_shape(s, names, device, dtype, backward, warmup, reps, check))

    groups = []
    for heads, head_dim in dict.fromkeys((r["heads"], r["head_dim"]) for r in rows):
        members = [r for r in rows if (r["heads"], r["head_dim"]) == (heads, head_dim)]
        counted = [r for r in members if r["dynamic"]] or members
        complete = [n for n in names if all(n in r["ms"] for r in counted)]
        totals = {n: sum(r["ms"][n] for r in counted) for n in complete}
        groups.append({
            "device": device.type, "dtype": _dtype_name(dtype), "heads": heads, "head_dim": head_dim,
            "lengths": [r["length"] for r in counted], "ms_total": totals,
            "chosen": min(totals, key=totals.__getitem__) if totals else None,
        })  # fmt: skip

    if install:
        for r in rows:
            if r["chosen"] is not None:
                group = (device.type, dtype, r["heads"], r["head_dim"])
                _exact.setdefault(group, {})[r["length"]] = r["chosen"]
        for g in groups:
            if g["chosen"] is not None:
                _default[(device.type, dtype, g["heads"], g["head_dim"])] = g["chosen"]
        _measured_on.update(_environment(device))
    return {
        **_environment(device), "device": str(device), "dtype": _dtype_name(dtype), "backends": names,
        "warmup": warmup, "reps": reps, "check": check, "flops": FLOPS_CONVENTION, "shapes": rows,
        "groups": groups,
    }


def _environment(device: torch.device) -> dict[str, str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device_name": name, "torch": torch.__version__}


set_attention_backend(os.environ.get("VJEPA_FAST_ATTN", "auto"))
if os.environ.get("VJEPA_FAST_ATTN_TABLE"):
    load_attention_table(os.environ["VJEPA_FAST_ATTN_TABLE"])
