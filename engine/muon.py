"""`--optimizer muon`: Muon for the conv filters, Nesterov SGD for everything else, in one optimizer.

Muon (Keller Jordan, 2024) replaces a filter's momentum update by the nearest semi-orthogonal
matrix: the update, viewed as a (out channels, in channels x kernel) matrix, keeps its singular
vectors and has every singular value set near 1 (a Newton-Schulz iteration, no SVD). The step
then moves every direction of the filter by the same amount, which a plain momentum step does
not: airbench94_muon (KellerJordan/cifar10-airbench) reaches 94% on CIFAR-10 in 8 epochs
against airbench94's 9.9 with SGD.

torch.optim.Muon takes matrices only, so this is airbench94_muon's form for conv filters:
- Nesterov momentum (buffer = momentum x buffer + gradient; step along gradient + momentum x
  buffer), then the Newton-Schulz iteration (3 steps of the quintic with its coefficients). Its
  matrix products run in `matmul_dtype`: bfloat16 where the run trains in bf16 (as airbench94_muon
  runs them on its GPU; on the 2-core Xeon with AMX one step of fast_cifar94's optimizer took
  17 ms against 43-45 in float32, bench/bench_optim.py), float32 elsewhere (a CPU without native
  bf16 emulates it, far slower);
- before each step the filter is rescaled to Frobenius norm sqrt(out channels) (each output
  filter of norm 1 on average). A conv followed by BatchNorm computes the same function at any
  scale; a fixed scale keeps each step of size lr a fixed relative change, so Muon takes no
  weight decay. A conv without a norm after it trains at that scale from its first step.
Every other parameter (biases, norms, linear layers such as the head, a layer scale; engine.optim.conv_filters) takes
torch's SGD step (torch.optim.sgd.sgd, Nesterov) with its group's lr, momentum and weight decay.
Groups are built by engine/optim.py, so the schedule, --bn-lr-scale and epoch-limited parameters
work as with the other optimizers; all state is in `state_dict`, so a checkpoint resumes exactly.
"""

import torch
from torch.optim.sgd import sgd

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic's a, b, c (Muon's: the steepest slope at 0 that still converges)
NS_STEPS = 3  # airbench94_muon's; 5 in the language-model Muon
PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def orthogonalize(update, steps=NS_STEPS, eps=1e-7, dtype=torch.float32):
    """The (rows, cols) matrix `update` with its singular values moved near 1 (roughly to
    0.7-1.2), its singular vectors kept: the Newton-Schulz quintic on the matrix scaled to
    spectral norm <= 1 (via its Frobenius norm), iterated in `dtype`. float32 in, float32 out."""
    a, b, c = NS_COEFFICIENTS
    x = (update / (update.norm() + eps)).to(dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the wide side: the Gram matrix x @ x.T is then the smaller one
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    x = x.float()
    return x.T if tall else x


def is_filter(p):
    """Whether Muon can step the parameter `p`: 3 or more dimensions (engine.optim.conv_filters picks a conv's)."""
    return p.dim() >= 3


class Muon(torch.optim.Optimizer):
    """Groups whose "orthogonalize" is True hold conv filters and take Muon's step; the others
    take Nesterov SGD's. Every group has lr, momentum and weight_decay (a Muon group ignores
    its weight_decay: see the module's docstring). `matmul_dtype` is how the run computes, not
    state: a checkpoint resumes under whatever the resuming machine chooses."""

    def __init__(self, params, lr, momentum, weight_decay=0.0, matmul_dtype=torch.float32):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), not {momentum!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, orthogonalize=False))
        self.matmul_dtype = matmul_dtype
        for group in self.param_groups:
            if group["orthogonalize"] and not all(is_filter(p) for p in group["params"]):
                raise ValueError("a Muon group holds conv filters only (parameters of 3 or more dimensions)")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["orthogonalize"]:
                if group["lr"] > 0:  # lr 0 holds a filter exactly (a stopped group): no rescaling either
                    for p in params:
                        self._muon_step(p, group["lr"], group["momentum"])
                continue
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            sgd(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"],
                momentum=group["momentum"], lr=group["lr"], dampening=0.0, nesterov=group["momentum"] > 0,
                maximize=False)
            if group["momentum"] > 0:
                for p, buffer in zip(params, buffers):
                    self.state[p]["momentum_buffer"] = buffer
        return loss

    def _muon_step(self, p, lr, momentum):
        grad = p.grad.float()
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buffer = state["momentum_buffer"]
        buffer.mul_(momentum).add_(grad)
        grad = grad.add(buffer, alpha=momentum)  # Nesterov
        norm = p.norm().float()  # an all-zero filter keeps its scale until its first step moves it (no host sync)
        p.mul_(torch.where(norm > 0, len(p) ** 0.5 / norm, 1.0).to(p.dtype))
        update = orthogonalize(grad.reshape(len(grad), -1), dtype=self.matmul_dtype).view(grad.shape)
        p.add_(update.to(p.dtype), alpha=-lr)

    def describe(self):
        """One line: what Muon steps and what SGD steps."""
        filters = [p for g in self.param_groups if g["orthogonalize"] for p in g["params"] if p.requires_grad]
        if not filters:
            return "Optimizer: muon, but the model has no trainable conv filter: every parameter takes Nesterov SGD"
        rest = sum(p.numel() for g in self.param_groups if not g["orthogonalize"] for p in g["params"] if p.requires_grad)
        name = PRECISION.get(self.matmul_dtype, self.matmul_dtype)
        precision = "" if self.matmul_dtype == torch.float32 else f", orthogonalised in {name}"
        return (f"Optimizer: Muon for {len(filters)} conv filter{'s' * (len(filters) != 1)} "
                f"({sum(p.numel() for p in filters):,} parameters"
                f"{precision}), Nesterov SGD for the other {rest:,}")
