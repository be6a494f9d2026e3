"""The bytes-moved model of the fused conv2d -> ReLU -> max_pool2d(2) kernel against the engine's
eager path, shared by the tests, the bench and kernels.conv_relu_pool's docstring table."""

from dataclasses import dataclass

from kernels.envelope import POOL, conv_size, pair


@dataclass(frozen=True)
class Traffic:
    """Compulsory DRAM traffic of one forward pass, per path: {op: (bytes read, bytes written)}."""

    unfused: dict
    fused: dict
    flops: int  # 2 x MACs of the conv outputs the pool keeps: the useful work, equal for both paths

    @property
    def unfused_bytes(self):
        return sum(r + w for r, w in self.unfused.values())

    @property
    def fused_bytes(self):
        return sum(r + w for r, w in self.fused.values())


def traffic(x_shape, weight_shape, stride=1, padding=0, element_size=4, has_bias=True, training=False):
    """Each tensor read or written once at its real size (caches assumed to catch re-reads of x
    and w inside a kernel). `unfused` is the engine's own eager path on CUDA
    (engine.models.conv_relu_pool_eager: conv, then max-pool, whose CUDA kernel always writes
    int64 argmax indices, then ReLU on the pooled tensor); `training` adds the fused kernel's
    int8 window index."""
    n, c, h, w = x_shape
    oc, _, kh, kw = weight_shape
    oh, ow = conv_size(h, w, kh, kw, pair("stride", stride), pair("padding", padding))
    ph, pw = oh // POOL, ow // POOL
    inputs = (n * c * h * w + oc * c * kh * kw + (oc if has_bias else 0)) * element_size
    conv, pooled = n * oc * oh * ow * element_size, n * oc * ph * pw * element_size
    indices = 8 * n * oc * ph * pw  # int64, one per pooled element
    return Traffic(
        unfused={"conv": (inputs, conv), "pool": (conv, pooled + indices), "relu": (pooled, pooled)},
        fused={"conv_relu_pool": (inputs, pooled + (n * oc * ph * pw if training else 0))},
        flops=2 * n * oc * ph * POOL * pw * POOL * c * kh * kw,
    )
