"""grid_sample and antialiased upsampling: the mirror's rules against PyTorch, in float64 and float32, over modes,
padding modes, align_corners and shapes (the node checked, not passed through), and wrong gradients caught."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cases import checked

import autogradlens as lens
from autogradlens.mirror import conv, sampling, table

DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
GRID_TYPES = {"GridSampler2DBackward0", "GridSampler3DBackward0", "GridSampler2DCpuFallbackBackward0"}
AA_TYPES = {"UpsampleBilinear2DAaBackward0", "UpsampleBicubic2DAaBackward0", "UpsampleLanczos2DAaBackward0"}


def _grid_loss(dtype, shape, out, mode, pad, align, spread=1.2, seed=0, snap=None, grad=("x", "grid")):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, dtype=dtype, generator=g)
    grid = (torch.rand(shape[0], *out, len(shape) - 2, dtype=dtype, generator=g) * 2 - 1) * spread
    if snap:  # grid points on pixel centres, edges and the borders: the kinks of the interpolation
        grid = torch.round(grid * snap) / snap
    leaves = {"x": x.requires_grad_("x" in grad), "grid": grid.requires_grad_("grid" in grad)}
    y = F.grid_sample(x, grid, mode=mode, padding_mode=pad, align_corners=align)
    return (y * torch.randn(y.shape, dtype=dtype, generator=g)).sum(), {k: v for k, v in leaves.items() if k in grad}



CASES_2D = [((2, 3, 5, 7), (4, 6)), ((1, 2, 1, 4), (3, 3)), ((1, 1, 6, 2), (2, 5))]


@DTYPES
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("pad", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [False, True])
def test_grid_sample_2d_matches_pytorch(dtype, mode, pad, align):
    for (shape, out), (spread, snap) in itertools.product(CASES_2D, [(1.2, None), (3.5, None), (1.0, 4), (1.1, 12)]):
        loss, leaves = _grid_loss(dtype, shape, out, mode, pad, align, spread, snap=snap)
        checked(lens.mirror(loss, params=leaves, mode="tensor"), GRID_TYPES)


@DTYPES
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("pad", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [False, True])
def test_grid_sample_3d_matches_pytorch(dtype, mode, pad, align):
    for shape, out in [((2, 2, 3, 4, 5), (2, 3, 2)), ((1, 3, 1, 2, 3), (1, 4, 2))]:
        for spread, snap in [(1.2, None), (3.0, None), (1.0, 4)]:
            loss, leaves = _grid_loss(dtype, shape, out, mode, pad, align, spread, snap=snap)
            checked(lens.mirror(loss, params=leaves, mode="tensor"), GRID_TYPES)


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("pad", [0, 1, 2], ids=["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [False, True])
def test_the_scalar_2d_fallback_kernel_matches_pytorch(mode, pad, align):
    """torch._grid_sampler_2d_cpu_fallback (what grid_sample runs where 32-bit offsets would overflow; float32 only):
    the scalar kernel's coordinates, not the vectorised one's."""
    for seed, (spread, snap) in enumerate([(1.2, None), (3.5, None), (1.0, 8)]):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 3, 5, 7, generator=g).requires_grad_()
        grid = (torch.rand(2, 4, 6, 2, generator=g) * 2 - 1) * spread
        grid = (torch.round(grid * snap) / snap if snap else grid).requires_grad_()
        y = torch._grid_sampler_2d_cpu_fallback(x, grid, mode, pad, align)
        loss = (y * torch.randn(y.shape, generator=g)).sum()
        checked(lens.mirror(loss, params={"x": x, "grid": grid}, mode="tensor"), GRID_TYPES)


@pytest.mark.parametrize("grad", [("x",), ("grid",)])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_grid_sample_with_one_input_needing_a_gradient(grad, mode):
    loss, leaves = _grid_loss(torch.float32, (2, 3, 5, 7), (4, 6), mode, "border", False, grad=grad)
    checked(lens.mirror(loss, params=leaves, mode="tensor"), GRID_TYPES)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_grid_sample_in_scalar_mode(mode):
    loss, leaves = _grid_loss(torch.float64, (1, 2, 3, 4), (2, 3), mode, "reflection", False, 1.5)
    rep = lens.mirror(loss, params=leaves, mode="scalar")
    assert rep.mode == "scalar"
    checked(rep, GRID_TYPES)


_OFF = [("bilinear", "zeros", "grid"), ("bilinear", "reflection", "grid"), ("bicubic", "border", "grid"),
        ("bicubic", "zeros", "x"), ("nearest", "border", "x"), ("bilinear", "border", "x")]


@pytest.mark.parametrize("mode,pad,which,dims", [(*c, 2) for c in _OFF] +
                         [(*c, 3) for c in _OFF if c[0] != "bicubic"])  # (bicubic grid_sample is 2-d only)
def test_a_gradient_off_by_one_part_in_a_thousand_is_caught_in_float32(mode, pad, which, dims):
    shape, out = ((2, 3, 5, 7), (4, 6)) if dims == 2 else ((1, 2, 3, 4, 5), (2, 3, 2))
    loss, leaves = _grid_loss(torch.float32, shape, out, mode, pad, False, 1.5)
    leaves[which].register_hook(lambda gr: gr * (1 + 1e-3))
    rep = lens.mirror(loss, params=leaves, mode="tensor")
    assert not rep.ok
    assert [r for r in rep.rows if r["name"] == which][0]["e2e_status"] == "mismatch"


def test_a_wrong_reflection_or_border_gradient_in_the_rule_is_caught(monkeypatch):
    """The rule itself checked, not only the end-to-end sums: a rule that forgets the sign a reflection puts on the
    grid's gradient, or the zero at a clipped coordinate, reports the node as a mismatch."""
    orig_reflect, orig_clip = sampling._reflect, sampling._clip
    monkeypatch.setattr(sampling, "_reflect", lambda *a: orig_reflect(*a)[:2] + (np.ones(np.shape(a[0])),))
    loss, leaves = _grid_loss(torch.float64, (2, 3, 5, 7), (4, 6), "bilinear", "reflection", False, 3.5)
    rep = lens.mirror(loss, params=leaves, mode="tensor")
    assert [r["status"] for r in rep.rows if r["type"] in GRID_TYPES] == ["mismatch"]
    monkeypatch.setattr(sampling, "_reflect", orig_reflect)
    monkeypatch.setattr(sampling, "_clip", lambda *a: orig_clip(*a)[:2] + (np.ones(np.shape(a[0])),))
    loss, leaves = _grid_loss(torch.float32, (2, 3, 5, 7), (4, 6), "bilinear", "border", True, 2.0)
    rep = lens.mirror(loss, params=leaves, mode="tensor")
    assert [r["status"] for r in rep.rows if r["type"] in GRID_TYPES] == ["mismatch"]


def _aa_loss(dtype, shape, size, mode, align, scale=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, dtype=dtype, generator=g).requires_grad_()
    kw = {"scale_factor": scale} if scale else {"size": size}
    y = F.interpolate(x, mode=mode, align_corners=align, antialias=True, **kw)
    return (y * torch.randn(y.shape, dtype=dtype, generator=g)).sum(), {"x": x}


@DTYPES
@pytest.mark.parametrize("mode,align", [("bilinear", False), ("bilinear", True), ("bicubic", False),
                                        ("bicubic", True), ("lanczos", False)])
def test_antialiased_upsampling_matches_pytorch(dtype, mode, align):
    for shape, size in itertools.product([(2, 3, 9, 11), (1, 2, 16, 7)], [(4, 5), (3, 20), (16, 7), (1, 1), (30, 2)]):
        loss, leaves = _aa_loss(dtype, shape, size, mode, align)
        checked(lens.mirror(loss, params=leaves, mode="tensor"), AA_TYPES)
    for scale in (0.3, 0.55, 1.7):
        loss, leaves = _aa_loss(dtype, (1, 2, 13, 10), None, mode, align, scale)
        checked(lens.mirror(loss, params=leaves, mode="tensor"), AA_TYPES)


@pytest.mark.parametrize("dtype, off, mode", [(torch.float32, 1e-3, m) for m in ("bilinear", "bicubic", "lanczos")]
                         + [(torch.float64, 1e-6, m) for m in ("bilinear", "bicubic")])
def test_antialiased_upsampling_off_by_a_little_is_caught(dtype, off, mode):
    """One part in a thousand in float32, one in a million in float64."""
    loss, leaves = _aa_loss(dtype, (2, 3, 17, 12), (5, 4), mode, False)
    leaves["x"].register_hook(lambda gr: gr * (1 + off))
    rep = lens.mirror(loss, params=leaves, mode="tensor")
    assert not rep.ok and [r for r in rep.rows if r["name"] == "x"][0]["e2e_status"] == "mismatch"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_antialiasing_weights_are_pytorchs_bit_for_bit(dtype):
    """The weights the rule computes are the kernel's own (its forward pass over one-hot rows gives them exactly),
    the cubic filter with the fused multiply-adds the kernel was found to use (or not), Lanczos with the C library's
    sin."""
    ft, dt = (np.float64, torch.float64) if dtype == "float64" else (np.float32, torch.float32)
    for n_in, n_out, align, mode in itertools.product([1, 3, 8, 17, 64], [1, 2, 5, 9, 40], [False, True],
                                                      ["bilinear", "bicubic", "lanczos"]):
        if mode == "lanczos" and align:
            continue  # (Lanczos takes no align_corners)
        x = torch.eye(n_in, dtype=dt).reshape(n_in, 1, 1, n_in)
        y = F.interpolate(x, size=(1, n_out), mode=mode, align_corners=align, antialias=True)[:, 0, 0, :]
        arith = conv._aa_arithmetic(mode, dtype)
        assert arith is not None
        w = conv._aa_weights(n_in, n_out, align, None, ft, mode, False, arith)
        assert np.array_equal(y.numpy().T.astype(np.float64), w), (n_in, n_out, align, mode)


@DTYPES
@pytest.mark.parametrize("mode", ["bicubic", "lanczos"])
def test_antialiased_filters_bounded_where_the_kernels_arithmetic_is_unknown(dtype, mode, monkeypatch):
    """A kernel whose filter the rule does not reproduce bit for bit: the weights come from float64 and are bounded
    on magnitudes (the evaluation's running error; for Lanczos sin's), no false alarm, and a wrong gradient is still
    caught in float64."""
    monkeypatch.setattr(conv, "_aa_arithmetic", lambda kind, dtype: None)
    for shape, size in [((2, 3, 9, 11), (4, 5)), ((1, 2, 16, 7), (3, 20)), ((2, 1, 17, 12), (5, 4))]:
        loss, leaves = _aa_loss(dtype, shape, size, mode, False)
        checked(lens.mirror(loss, params=leaves, mode="tensor"), AA_TYPES)
    if dtype == torch.float64:
        loss, leaves = _aa_loss(dtype, (2, 3, 17, 12), (5, 4), mode, False)
        leaves["x"].register_hook(lambda gr: gr * (1 + 1e-6))
        assert not lens.mirror(loss, params=leaves, mode="tensor").ok


@pytest.mark.parametrize("kind", ["GridSampler2DBackward0", "UpsampleBicubic2DAaBackward0"])
def test_a_node_on_another_device_is_left_unmirrored(kind):
    """The rules reproduce the CPU kernels' arithmetic; a CUDA node's rule raises Unsupported (unmirrored, with the
    reason) rather than risk a false alarm."""
    attrs = {"device": "cuda:0", "interpolation_mode": 0, "padding_mode": 0, "align_corners": False,
             "self_sym_sizes": (1, 1, 4, 4), "scales_h": None, "scales_w": None}
    saved = {"input": np.zeros((1, 1, 4, 4)), "grid": np.zeros((1, 2, 2, 2))}
    c = table.Ctx(kind, [np.ones((1, 1, 2, 2))], saved, attrs, [(1, 1, 4, 4), (1, 2, 2, 2)], [(1, 1, 2, 2)], False,
                  ["float32", "float32"])
    with pytest.raises(table.Unsupported, match="cuda:0"):
        table.RULES[kind](c)
    del c.a["device"]  # a rule told no device (a caller that forgot it) refuses too
    with pytest.raises(table.Unsupported, match="an unknown device"):
        table.RULES[kind](c)
    c.a["device"] = "cpu"
    assert table.RULES[kind](c)[0].shape == (1, 1, 4, 4)
    assert kind in table.CPU_KERNEL  # (so the driver hands the node's device over)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_grid_sample_is_left_unmirrored_not_a_false_alarm(dtype):
    """The CPU kernel picks a half-precision grid's pixels in that precision, which the rule does not reproduce: every
    mode and padding is unmirrored with the reason (float16 nearest with reflection was a mismatch on correct
    gradients before), and the loss is ok."""
    for mode, pad, align in itertools.product(["bilinear", "nearest", "bicubic"], ["zeros", "border", "reflection"],
                                              [False, True]):
        for seed in range(3):
            loss, leaves = _grid_loss(dtype, (1, 2, 5, 6), (4, 3), mode, pad, align, seed=seed)
            rep = lens.mirror(loss, params=leaves, mode="tensor")
            (row,) = [r for r in rep.rows if r["type"] in GRID_TYPES]
            assert rep.ok and row["status"] == "unmirrored" and f"grid_sample in {str(dtype)[6:]}" in row["note"]


def test_infinite_input_values_are_mirrored_and_a_nan_grid_is_left_unmirrored():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=g)
    x[0, 0, 1, 2], x[0, 1, 2, 3] = float("inf"), float("nan")
    x.requires_grad_()
    grid = (torch.rand(1, 3, 3, 2, dtype=torch.float64, generator=g) * 2.4 - 1.2).requires_grad_()
    y = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    rep = lens.mirror((y * torch.randn(y.shape, dtype=torch.float64, generator=g)).sum(), mode="tensor")
    assert rep.ok and not rep.unmirrored
    grid = grid.detach().clone()
    grid[0, 0, 0, 0] = float("nan")  # (zeros padding: PyTorch's border and reflection kernels crash on a NaN)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    rep = lens.mirror(F.grid_sample(x, grid.requires_grad_(), align_corners=False).sum(), mode="tensor")
    row = [r for r in rep.rows if r["type"] in GRID_TYPES][0]
    assert row["status"] == "unmirrored" and "NaN" in row["note"]


def test_a_kernel_whose_coordinates_the_rule_does_not_reproduce_leaves_the_node_unmirrored(monkeypatch):
    monkeypatch.setattr(sampling, "_fuses", lambda dtype, kernel: None)
    loss, leaves = _grid_loss(torch.float32, (1, 2, 3, 4), (2, 3), "bilinear", "zeros", False)
    rep = lens.mirror(loss, params=leaves, mode="tensor")
    assert rep.ok and [r["status"] for r in rep.rows if r["type"] in GRID_TYPES] == ["unmirrored"]
    loss, leaves = _grid_loss(torch.float32, (1, 2, 3, 4), (2, 3), "bilinear", "zeros", True)  # no unnormalising sum
    checked(lens.mirror(loss, params=leaves, mode="tensor"), GRID_TYPES)
