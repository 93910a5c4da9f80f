"""Winograd F(4x4, 3x3): the same 3x3 stride-1 convolution with 4x fewer multiplications.

Direct convolution spends 9 multiply-adds per output per channel pair; Winograd's minimal filtering
algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) gets each 4x4
output tile from a 6x6 input tile with 36 products, by moving tile and kernel into a transformed space
where the convolution becomes 36 independent matrix products. It is exact in real arithmetic; in
float32 the results differ from direct convolution by rounding only (relative error about 1e-5).

VGG16 spends nearly all its 15.5 GFLOP in wide 3x3 convolutions, and on a CPU the direct path already
runs near the machine's peak, so fewer multiplications is the lever left. The tile transforms are
memory-bound: they pay only where channels are wide (>= MIN_CHANNELS, measured) and only when XLA
fuses them, so `accelerate` reports whether the model needs compiling with XLA.
"""

from __future__ import annotations

import numpy as np

from ensemble_group import quiet_tf

MIN_CHANNELS = 128  # narrower layers lose more to the transforms than they gain (VGG16, 2-core AVX2)
MIN_SHARE = 0.5  # below this share of a model's multiply-adds, XLA's compile time costs more than it saves

_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float32)  # input
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float32)  # kernel
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float32)  # output
_M, _A = 4, 6  # output tile, input tile


def conv3x3(x, kernel, padding: str = "same"):
    """Stride-1 3x3 convolution of x (n, h, w, c) with kernel (3, 3, c, k), as tf.nn.conv2d would.

    padding "same" gives (n, h, w, k), "valid" (n, h - 2, w - 2, k).
    """
    tf = quiet_tf.tensorflow()

    _, h, w, _ = x.shape  # the batch may be unknown (a shape-generic trace): only -1 stands for it
    lead = 1 if padding == "same" else 0
    oh, ow = (h, w) if padding == "same" else (h - 2, w - 2)
    th, tw = -(-oh // _M), -(-ow // _M)  # tiles per column and row; the last ones may overhang
    x = tf.pad(x, [[0, 0], [lead, th * _M + 2 - h - lead], [lead, tw * _M + 2 - w - lead], [0, 0]])
    # input transform B^T d B on every 6x6 tile (tiles overlap by 2), as two strided passes
    rows = tf.tensordot(_BT, tf.stack([x[:, i:i + _M * th:_M] for i in range(_A)]), 1)
    tiles = tf.tensordot(_BT, tf.stack([rows[:, :, :, j:j + _M * tw:_M] for j in range(_A)]), 1)
    v = tf.reshape(tf.transpose(tiles, [1, 0, 2, 3, 4, 5]), [_A * _A, -1, x.shape[-1]])
    u = tf.reshape(tf.einsum("ai,bj,ijck->abck", _G, _G, kernel), [_A * _A, *kernel.shape[2:]])
    m = tf.reshape(tf.matmul(v, u), [_A, _A, -1, th, tw, kernel.shape[-1]])  # the 36 products
    y = tf.einsum("pa,qb,abnhwk->nhpwqk", _AT, _AT, m)  # output transform A^T m A, tiles back in place
    return tf.reshape(y, [-1, th * _M, tw * _M, kernel.shape[-1]])[:, :oh, :ow]


def eligible(layer) -> bool:
    """A plain 3x3 stride-1 Conv2D wide enough for Winograd to pay."""
    keras = quiet_tf.keras()

    return (type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (3, 3)
            and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
            and layer.groups == 1 and layer.padding in ("same", "valid")
            and layer.data_format == "channels_last" and min(layer.kernel.shape[2:]) >= MIN_CHANNELS)


def multiply_adds(layer) -> int:
    """Multiply-adds per image of a convolution layer (kernel (kh, kw, c, k) or depthwise (kh, kw, c, 1))."""
    _, h, w, _ = layer.output.shape
    return int(h * w * np.prod(layer.kernel.shape))


def accelerate(model) -> int:
    """Switch the eligible conv layers of a Keras model to Winograd; returns how many were switched.

    Nothing is switched when those layers hold under MIN_SHARE of the model's convolution work
    (VGG16: 81 %; ResNet50: 39 %, where Winograd + XLA measured no faster than folded batch
    normalisation alone, and costs a compile; InceptionV3: 3 %). The layers keep their weights (the
    transform is taken from the kernel on each call, a few MFLOP), so loading other weights later
    stays correct.
    Compile the model with XLA when this returns > 0.
    """
    convs = [layer for layer in model.layers if len(getattr(layer, "kernel", np.empty(0)).shape) == 4]
    chosen = [layer for layer in convs if eligible(layer)]
    total = sum(multiply_adds(layer) for layer in convs)
    if not chosen or sum(multiply_adds(layer) for layer in chosen) < MIN_SHARE * total:
        return 0
    for layer in chosen:
        layer.convolution_op = (lambda padding: lambda x, kernel: conv3x3(x, kernel, padding))(layer.padding)
    return len(chosen)
