"""Complex tensors: views between real and complex, conjugates, the Fourier transforms (what an STFT front end and an
FFT convolution use), polar and complex construction.

PyTorch's convention (its conjugate Wirtinger calculus): the gradient of a real loss L with respect to z = x + iy is
dL/dx + i dL/dy, so a product's rule multiplies by the conjugate of the other factor, and a complex gradient reaching
a real input keeps its real part. The transforms are written with np.fft.fftn (unnormalised, explicit axes, which
bounds.Mag bounds as N-term sums); the inverse direction is conj(fftn(conj(g))).
"""

from __future__ import annotations

import math

import numpy as np

from .table import complex_ok, rule

# Rules that are structural (they move or sum gradients, or multiply them by real constants): right for complex as is.
complex_ok("SumBackward0", "SumBackward1", "MeanBackward0", "MeanBackward1", "ViewBackward0", "UnsafeViewBackward0",
           "ReshapeAliasBackward0", "TransposeBackward0", "TransposeBackward1", "TBackward0", "PermuteBackward0",
           "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "SqueezeBackward3", "SqueezeBackward4",
           "SqueezeBackward5",
           "UnsqueezeBackward0", "ExpandBackward0", "SliceBackward0", "SelectBackward0", "CatBackward0",
           "StackBackward0", "SplitBackward0", "SplitWithSizesBackward0", "UnbindBackward0", "CloneBackward0",
           "AliasBackward0", "NegBackward0", "AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1",
           "ConstantPadNdBackward0", "FlipBackward0", "RollBackward0", "RepeatBackward0", "IndexBackward0",
           "IndexSelectBackward0", "GatherBackward0", "NarrowCopyBackward0", "AsStridedBackward0",
           "DiagonalBackward0", "UnfoldBackward0", "TrilBackward0", "TriuBackward0",
           # written with conjugates: a * b, a / b; |z| (its rule multiplies by sgn(z) = z / |z|); a cast (a complex
           # gradient to a real input keeps its real part: the driver's handle_r_to_c)
           "MulBackward0", "DivBackward0", "AbsBackward0", "ToCopyBackward0")


def _scale(mode: int, n: int) -> float:  # PyTorch's fft_norm_mode: 0 none, 1 by 1/sqrt(n), 2 by 1/n
    return 1.0 if mode == 0 else 1 / math.sqrt(n) if mode == 1 else 1 / n


def _inverse(g, axes):  # sum_k g_k e^{+2 pi i jk/N}, unnormalised
    return np.conj(np.fft.fftn(np.conj(g), axes=axes))


@rule("ViewAsRealBackward0")
def _view_as_real(c):  # (..., 2) real -> complex
    return (c.g[..., 0] + 1j * c.g[..., 1],)


@rule("ViewAsComplexBackward0")
def _view_as_complex(c):
    return (np.stack([np.real(c.g), np.imag(c.g)], axis=-1),)


@rule("ConjBackward0", "ConjPhysicalBackward0")
def _conj(c):
    return (np.conj(c.g),)


@rule("ComplexBackward0")
def _complex(c):  # torch.complex(real, imag): slots (real, imag)
    return (np.real(c.g), np.imag(c.g))


@rule("PolarBackward0")
def _polar(c):  # abs * e^{i angle}: slots (abs, angle): Re(conj(G) sgn(z)), Re(conj(G) i z), z the result
    z = c.s["result"]
    a = np.abs(z)
    sgn = np.where(a == 0, 0.0, z / np.where(a == 0, 1.0, a))
    gc = np.conj(c.g)
    return (np.real(gc * sgn), np.real(gc * (z * 1j)))


@rule("FftR2CBackward0")
def _fft_r2c(c):
    """rfft / stft (real -> complex, one-sided or not) over `dim`: the gradient padded with zeros to the full length,
    the inverse transform (unnormalised, times the forward's normalisation), its real part (fft_r2c_backward)."""
    dims, shape = [d % len(c.in_shapes[0]) for d in c.a["dim"]], c.in_shapes[0]
    g = c.g
    last = dims[-1]
    if c.a["onesided"] and g.shape[last] < shape[last]:
        pad = [(0, 0)] * g.ndim
        pad[last] = (0, shape[last] - g.shape[last])
        g = np.pad(g, pad)
    n = math.prod(shape[d] for d in dims)
    return (np.real(_inverse(g, dims)) * _scale(c.a["normalization"], n),)


@rule("FftC2CBackward0")
def _fft_c2c(c):  # the transform the other way, with the same normalisation
    dims = [d % c.g.ndim for d in c.a["dim"]]
    n = math.prod(c.g.shape[d] for d in dims)
    t = _inverse(c.g, dims) if c.a["forward"] else np.fft.fftn(c.g, axes=dims)
    return (t * _scale(c.a["normalization"], n),)


@rule("FftC2RBackward0")
def _fft_c2r(c):
    """irfft (one-sided complex -> real of length N): the one-sided forward transform of the gradient, the bins whose
    mirror images were dropped (1 .. N - len) counted twice (PyTorch's fft_c2r_backward)."""
    dims = [d % c.g.ndim for d in c.a["dim"]]
    last = dims[-1]
    n = math.prod(c.g.shape[d] for d in dims)
    half = c.in_shapes[0][last]
    t = np.fft.fftn(c.g, axes=dims) * _scale(c.a["normalization"], n)
    t = np.take(t, np.arange(half), axis=last)
    double = c.g.shape[last] - half
    if double > 0:
        w = np.ones(half)
        w[1:1 + double] = 2.0
        t = t * w.reshape((-1,) + (1,) * (t.ndim - 1 - last))
    return (t,)


complex_ok("ViewAsRealBackward0", "ViewAsComplexBackward0", "ConjBackward0", "ConjPhysicalBackward0",
           "ComplexBackward0", "PolarBackward0", "FftR2CBackward0", "FftC2CBackward0", "FftC2RBackward0")
