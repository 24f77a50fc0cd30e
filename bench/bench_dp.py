"""Time per DP epoch against a non-private epoch, over cached feature pairs (default 100,000 at batch 1,024).

Modes (all over the same random features, in-batch CLIP loss unless said otherwise):
  nonprivate        shuffled batches, autograd, mean loss (the baseline)
  nonprivate-public the same with the public-negatives objective (the baseline of fast-public)
  fast              this project's exact rank-one per-sample norms for linear heads (Poisson batches)
  fast-patient      the same, clipping per patient (2 pairs per patient: Gram block sums)
  fast-public       public-negatives objective with 256 bank negatives per step (exact bank-aware norms)
  opacus-hooks      Opacus GradSampleModule (materialised per-sample gradients) + DPOptimizer
  opacus-ghost      Opacus ghost clipping (GradSampleModuleFastGradientClipping, two backward passes)
Every DP mode uses the same Poisson-sampled batches. Ratios are against `nonprivate` measured in the same run.

    python -m bench.bench_dp [--n 100000] [--batch 1024] [--d-img 128 --d-txt 128 --d 128] [--device cuda] [--epochs 1]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch

from backend.dp.objectives import LinearHeads, in_batch_loss, in_batch_per_row
from backend.dp.train import TrainConfig, TrainData, layer_grads, set_dp_grads, train_nonprivate


def _data(n: int, d_img: int, d_txt: int, device: str) -> TrainData:
    g = torch.Generator().manual_seed(0)
    xi, xt = torch.randn(n, d_img, generator=g), torch.randn(n, d_txt, generator=g)
    bank = torch.randn(4000, d_txt, generator=g)
    patients = torch.arange(n) // 2
    return TrainData(xi.to(device), xt.to(device), patients.to(device), n // 2, bank.to(device))


def _poisson_batches(n: int, q: float, steps: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(n, generator=g) < q).nonzero().squeeze(1) for _ in range(steps)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_fast(heads: LinearHeads, data: TrainData, batches: list[torch.Tensor], *, objective: str, patient: bool) -> None:
    opt = torch.optim.Adam(heads.parameters(), lr=1e-3)
    expected = sum(len(b) for b in batches) / len(batches)
    gen = torch.Generator(device=data.x_img.device).manual_seed(2)
    bank_gen = torch.Generator().manual_seed(3)
    for rows in batches:
        rows = rows.to(data.x_img.device)
        bank = data.bank[torch.randperm(len(data.bank), generator=bank_gen)[:256].to(data.bank.device)] if objective != "in-batch" else None
        opt.zero_grad()
        layers = layer_grads(heads, data.x_img[rows], data.x_txt[rows], bank, objective)
        unit = data.unit[rows] if patient else rows
        set_dp_grads(heads, layers, unit, max_grad_norm=1.0, noise_multiplier=1.0, expected_batch=expected, generator=gen)
        opt.step()


def run_opacus(heads: LinearHeads, data: TrainData, batches: list[torch.Tensor], *, ghost: bool) -> None:
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    expected = int(sum(len(b) for b in batches) / len(batches))
    scale = heads.logit_scale

    class Criterion:
        reduction = "mean"

        def __call__(self, q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            per_row = in_batch_per_row(q, z, scale)
            return per_row if self.reduction == "none" else per_row.mean()

    if ghost:
        module = GradSampleModuleFastGradientClipping(heads, batch_first=True, loss_reduction="mean", max_grad_norm=1.0,
                                                      use_ghost_clipping=True)
        opt = DPOptimizerFastGradientClipping(torch.optim.Adam(module.parameters(), lr=1e-3), noise_multiplier=1.0,
                                              max_grad_norm=1.0, expected_batch_size=expected, loss_reduction="mean")
        criterion = DPLossFastGradientClipping(module, opt, Criterion(), loss_reduction="mean")
    else:
        module = GradSampleModule(heads)
        opt = DPOptimizer(torch.optim.Adam(module.parameters(), lr=1e-3), noise_multiplier=1.0, max_grad_norm=1.0,
                          expected_batch_size=expected, loss_reduction="mean")
    for rows in batches:
        rows = rows.to(data.x_img.device)
        opt.zero_grad()
        q, z = module(data.x_img[rows], data.x_txt[rows])
        loss = criterion(q, z) if ghost else in_batch_loss(q, z, scale) / len(rows)
        loss.backward()
        opt.step()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--d-img", type=int, default=128)
    ap.add_argument("--d-txt", type=int, default=128)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1, help="epochs timed per mode (after one warm-up step)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the fastest of each mode is reported")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", nargs="+", default=["nonprivate", "nonprivate-public", "fast", "fast-patient", "fast-public", "opacus-hooks", "opacus-ghost"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook")  # Opacus on a module whose inputs need no grad
    data = _data(args.n, args.d_img, args.d_txt, args.device)
    q = args.batch / args.n
    steps = args.epochs * round(1 / q)
    batches = _poisson_batches(args.n, q, steps)
    print(f"# {args.n} pairs, batch {args.batch}, dims {args.d_img}/{args.d_txt}->{args.d}, {steps} steps, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    runners = {
        "nonprivate": lambda h, b: train_nonprivate(h, data, TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=1e-3)) if b is batches else None,
        "nonprivate-public": lambda h, b: train_nonprivate(h, data, TrainConfig(
            objective="public-negatives", epochs=args.epochs, batch_size=args.batch, lr=1e-3)) if b is batches else None,
        "fast": lambda h, b: run_fast(h, data, b, objective="in-batch", patient=False),
        "fast-patient": lambda h, b: run_fast(h, data, b, objective="in-batch", patient=True),
        "fast-public": lambda h, b: run_fast(h, data, b, objective="public-negatives", patient=False),
        "opacus-hooks": lambda h, b: run_opacus(h, data, b, ghost=False),
        "opacus-ghost": lambda h, b: run_opacus(h, data, b, ghost=True),
    }
    samples: dict[str, list[float]] = {m: [] for m in args.modes}
    for _ in range(args.repeats):  # interleaved, so that load on a shared machine hits every mode alike
        for mode in args.modes:
            torch.manual_seed(0)
            heads = LinearHeads(args.d_img, args.d_txt, args.d, bias=False, logit_scale=1 / 0.07).to(args.device)
            runners[mode](copy.deepcopy(heads), batches[:1])  # warm-up on a copy (non-private: skipped)
            _sync(args.device)
            t0 = time.perf_counter()
            runners[mode](heads, batches)
            _sync(args.device)
            samples[mode].append((time.perf_counter() - t0) / args.epochs * 1000)
    times = {m: min(v) for m, v in samples.items()}  # the least-disturbed run of each mode
    print(f"{'mode':18s} {'ms/epoch':>10s} {'x its non-private baseline':>28s}")
    for mode, ms in times.items():
        base = times.get("nonprivate-public" if "public" in mode else "nonprivate")  # same objective, same run
        ratio = f"{ms / base:.2f}" if base else "-"
        print(f"{mode:18s} {ms:10.0f} {ratio:>28s}")

if __name__ == "__main__":
    main()
