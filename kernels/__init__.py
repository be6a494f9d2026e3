"""Optional Triton kernels for the engine; nothing here is imported unless asked for.

`kernels.conv_relu_pool` fuses conv2d -> ReLU -> max_pool2d(2) into one Triton kernel with
autograd support (the engine swaps it into every `ConvReluPool` block under `--triton`);
`kernels.ops` registers it as torch custom ops (`torch.library.triton_op`) for `--triton --compile`.
`kernels.envelope` says what the kernel accepts (no Triton import), `kernels.tiles` holds its autotune
configs and the rule that picks them, `kernels.window` is its backward up to the convolution and
`kernels.traffic` its bytes-moved model.
`python -m kernels.aot --arch sm_80 sm_90` compiles it ahead of time for real GPUs without
one and prints registers, spills and shared memory per autotune config.

Importing this package does nothing: triton is imported only by the kernel module itself, so
a CPU-only install never pays for it (and the interpreter switch, TRITON_INTERPRET, can still be
set before triton is first imported).
"""
