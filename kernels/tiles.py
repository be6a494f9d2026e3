"""The fused kernel's autotune configs for sm_80 / sm_90, and the deterministic rule for which of
them a shape may use (kernels.conv_relu_pool autotunes over them; kernels.aot compiles exactly the
ones a seed layer selects). Triton is imported for its Config type only: no kernel is built here.
"""

import triton

FLAT_BELOW = 16  # channel counts below this reduce over flat (c, kh, kw); see conv_relu_pool._conv_flat


def _config(bm, bn, bk, warps, stages):
    # An explicit register budget that keeps 12-16 warps resident per SM (3 programs of 4 warps,
    # 2 of 8, 1 of 16 in the 64K-register file). Left to itself ptxas sometimes spills a few bytes
    # at 80-96 registers to chase occupancy; with a budget it does not (kernels.aot checks).
    maxnreg = {4: 168, 8: 128, 16: 128}[warps]
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages,
                         maxnreg=maxnreg)


# Largest tiles first (the interpreter takes the first that fits: fewer programs). Every config
# gives each thread at most 16 elements of the (BM, BN) tile: the kernel keeps three such tiles
# live (accumulator, running max, window index), and at 32 per thread ptxas needs ~250 registers.
# 64+ row tiles feed mma.sync on sm_80 and wgmma/mma on sm_90; BLOCK_K=16 serves the 1- and
# 3-channel first layers (K = 9, 27) and 16-channel blocks.
CONFIGS = [
    _config(128, 64, 32, 16, 2),
    _config(64, 128, 32, 16, 2),
    _config(128, 32, 16, 8, 2),
    _config(64, 32, 32, 4, 2),
    _config(64, 64, 16, 8, 2),
    _config(64, 32, 16, 4, 2),
    _config(32, 32, 16, 4, 2),
]


def candidate_configs(m, oc, reduction, configs=CONFIGS, first_only=False):
    """The configs autotuning may pick for m pooled rows x oc channels, reducing `reduction`
    elements per step (C*KH*KW on the flat path, C tap by tap).

    Deterministic, so it is known without a GPU which configs a shape can run (kernels.aot
    compiles exactly these for the seed models and fails if any of them spills): no tile may be
    wider than the next power of two of its dimension (16 at least, tl.dot's minimum), so no
    program spends most of its work on masked-off rows, channels or reduction steps. On a GPU the
    autotuner times the survivors; in the interpreter timing means nothing: the first one is used.
    """
    def fits(cfg):
        bm, bn, bk = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"]
        return (bm <= max(16, triton.next_power_of_2(m)) and bn <= max(16, triton.next_power_of_2(oc))
                and bk <= max(16, triton.next_power_of_2(reduction)))

    survivors = [cfg for cfg in configs if fits(cfg)] or configs[-1:]  # tiny problems: the smallest
    return survivors[:1] if first_only else survivors


def reduction_size(c, kh, kw):
    """Elements one reduction step ranges over: the flat path (C < 16) or a tap's channels."""
    return c * kh * kw if c < FLAT_BELOW else c
