"""DP-SGD on linear heads: exact fast per-example norms vs brute force (torch.func) and Opacus,
per-example independence of the public-negatives objective, patient-level clipping, epsilon = inf."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from backend.dp.objectives import LinearHeads, in_batch_loss, public_negatives_losses
from backend.dp.sgd import gram, materialize, sq_norms, unit_sq_norms, weighted_sum
from backend.dp.train import TrainConfig, TrainData, layer_grads, set_dp_grads, train_dp, train_nonprivate

D_IMG, D_TXT, D = 6, 5, 4


def _heads(bias: bool = True, seed: int = 0) -> LinearHeads:
    torch.manual_seed(seed)
    return LinearHeads(D_IMG, D_TXT, D, bias=bias, logit_scale=5.0).double()


def _batch(b: int = 7, m: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, D_IMG, generator=g, dtype=torch.float64),
            torch.randn(b, D_TXT, generator=g, dtype=torch.float64),
            torch.randn(m, D_TXT, generator=g, dtype=torch.float64))


def _func_per_example(heads: LinearHeads, xi, xt, bank) -> dict[str, torch.Tensor]:
    """Brute force: torch.func per-example gradients of each example's own public-negatives loss."""
    params = {k: v.detach() for k, v in heads.named_parameters()}

    def loss_one(p, a, t):
        q, z = functional_call(heads, p, (a[None], t[None]))
        zb = functional_call(heads.text, {"weight": p["text.weight"], "bias": p["text.bias"]}, (bank,))
        return public_negatives_losses(q, z, zb, heads.logit_scale)[0]

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, xi, xt)


def _joined(g: torch.Tensor, layer) -> tuple[torch.Tensor, torch.Tensor]:
    d_in = layer.weight.shape[1]
    return g[:, :, :d_in], g[:, :, d_in]


@pytest.mark.parametrize("objective", ["in-batch", "public-negatives"])
def test_fast_norms_and_sums_equal_materialised(objective: str) -> None:
    heads, (xi, xt, bank) = _heads(), _batch()
    for lg in layer_grads(heads, xi, xt, bank, objective):
        full = materialize(lg).flatten(1)
        torch.testing.assert_close(gram(lg), full @ full.T)
        torch.testing.assert_close(sq_norms(lg), (full * full).sum(1))
        s = torch.rand(len(xi), dtype=torch.float64)
        torch.testing.assert_close(weighted_sum(lg, s).flatten(), (s[:, None] * full).sum(0))


def test_public_negatives_factored_gradients_equal_torch_func() -> None:
    heads, (xi, xt, bank) = _heads(), _batch()
    ref = _func_per_example(heads, xi, xt, bank)
    img, txt = layer_grads(heads, xi, xt, bank, "public-negatives")
    w, b = _joined(materialize(img), heads.image)
    torch.testing.assert_close(w, ref["image.weight"])
    torch.testing.assert_close(b, ref["image.bias"])
    w, b = _joined(materialize(txt), heads.text)
    torch.testing.assert_close(w, ref["text.weight"])
    torch.testing.assert_close(b, ref["text.bias"])


def test_in_batch_per_example_gradients_sum_to_the_batch_gradient() -> None:
    heads, (xi, xt, _) = _heads(), _batch()
    img, txt = layer_grads(heads, xi, xt, None, "in-batch")
    in_batch_loss(*heads(xi, xt), heads.logit_scale).backward()
    torch.testing.assert_close(materialize(img).sum(0)[:, :D_IMG], heads.image.weight.grad)
    torch.testing.assert_close(materialize(txt).sum(0)[:, D_TXT], heads.text.bias.grad)


def test_changing_example_j_leaves_example_i_alone_only_for_public_negatives() -> None:
    """Why public-negatives is 'certified' and in-batch only 'nominal'."""
    heads, (xi, xt, bank) = _heads(), _batch()
    xi2, xt2 = xi.clone(), xt.clone()
    xi2[3] += 5.0
    xt2[3] -= 5.0  # pair j = 3 changes; look at pair i = 0
    for objective, same in (("public-negatives", True), ("in-batch", False)):
        before = [materialize(lg)[0] for lg in layer_grads(heads, xi, xt, bank, objective)]
        after = [materialize(lg)[0] for lg in layer_grads(heads, xi2, xt2, bank, objective)]
        unchanged = all(torch.allclose(a, b, atol=1e-12) for a, b in zip(before, after, strict=True))
        assert unchanged is same, objective


@pytest.mark.filterwarnings("ignore:Full backward hook")  # Opacus on a module whose inputs need no gradient
@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_fast_path_step_equals_opacus(noise: float) -> None:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    heads, (xi, xt, _) = _heads(), _batch(b=11)
    ref = _heads()
    ref.load_state_dict(heads.state_dict())
    c, expected = 0.05, 8.0  # small C so that most examples are clipped
    gsm = GradSampleModule(ref)
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.1), noise_multiplier=noise, max_grad_norm=c,
                      expected_batch_size=int(expected), loss_reduction="mean", generator=torch.Generator().manual_seed(3))
    loss = in_batch_loss(*gsm(xi, xt), heads.logit_scale) / len(xi)  # mean reduction: Opacus rescales by b
    loss.backward()
    opt.pre_step()
    norms = set_dp_grads(heads, layer_grads(heads, xi, xt, None, "in-batch"), torch.arange(len(xi)), max_grad_norm=c,
                         noise_multiplier=noise, expected_batch=expected, generator=torch.Generator().manual_seed(3))
    assert (norms > c).sum() >= 5
    for (name, p), (_, r) in zip(heads.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, msg=name)


def test_patient_unit_clips_each_patients_summed_gradient() -> None:
    heads, (xi, xt, bank) = _heads(), _batch(b=8)
    patient = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3])
    c = 0.3
    for objective in ("in-batch", "public-negatives"):
        layers = layer_grads(heads, xi, xt, bank, objective)
        full = torch.cat([materialize(lg).flatten(1) for lg in layers], dim=1)  # (b, all params)
        per_patient = torch.zeros(4, full.shape[1], dtype=full.dtype).index_add_(0, patient, full)
        torch.testing.assert_close(unit_sq_norms(layers, patient, 4), (per_patient ** 2).sum(1))
        norms = set_dp_grads(heads, layers, patient, max_grad_norm=c, noise_multiplier=0.0, expected_batch=1.0, generator=None)
        assert (norms > c).all()  # every patient needed clipping ...
        factor = (c / (norms + 1e-6)).clamp(max=1)
        clipped = per_patient * factor[:, None]
        assert (clipped.norm(dim=1) <= c + 1e-9).all()  # ... and each summed gradient is now within C
        got = torch.cat([torch.cat([lay.weight.grad, lay.bias.grad[:, None]], 1).flatten() for lay in (heads.image, heads.text)])
        torch.testing.assert_close(got, clipped.sum(0))


def _data(n: int = 40, seed: int = 0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    xi, xt = torch.randn(n, D_IMG, generator=g), torch.randn(n, D_TXT, generator=g)
    return TrainData(xi, xt + xi[:, :D_TXT], torch.arange(n), n, torch.randn(30, D_TXT, generator=g))


def test_epsilon_inf_is_plain_deterministic_training() -> None:
    data, cfg = _data(), TrainConfig(epochs=2, batch_size=16, lr=0.05, seed=4)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        heads = LinearHeads(D_IMG, D_TXT, D, bias=False, logit_scale=5.0)
        train_nonprivate(heads, data, cfg)
        runs.append(heads.state_dict())
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    # the reference: an independent plain loop over the same batches
    torch.manual_seed(0)
    ref = LinearHeads(D_IMG, D_TXT, D, bias=False, logit_scale=5.0)
    opt, gen = torch.optim.Adam(ref.parameters(), lr=0.05), torch.Generator().manual_seed(4)
    for _ in range(2):
        perm = torch.randperm(40, generator=gen)
        for rows in perm.split(16):
            opt.zero_grad()
            (in_batch_loss(*ref(data.x_img[rows], data.x_txt[rows]), 5.0) / len(rows)).backward()
            opt.step()
    torch.testing.assert_close(runs[0], ref.state_dict())


def test_train_config_takes_its_defaults_and_schedule_from_the_dp_spec() -> None:
    from backend.specs import DPSpec

    assert TrainConfig() == TrainConfig("in-batch", 5, 256, 1e-3, "adam", 256, 0, None, 1.0)
    assert TrainConfig.from_spec(DPSpec()) == TrainConfig()
    spec = DPSpec(objective="public-negatives", epochs=2, batch_size=16, lr=0.05, optimizer="sgd", n_negatives=8,
                  seed=4, max_grad_norm=0.5, epsilon=2.0)
    assert TrainConfig.from_spec(spec) == TrainConfig("public-negatives", 2, 16, 0.05, "sgd", 8, 4, None, 0.5)


def test_dp_training_is_seeded_and_noise_changes_it() -> None:
    data = _data()
    out = []
    for sigma in (0.0, 0.0, 2.0):
        torch.manual_seed(0)
        heads = LinearHeads(D_IMG, D_TXT, D, bias=True, logit_scale=5.0)
        info = train_dp(heads, data, TrainConfig(objective="public-negatives", epochs=1, batch_size=8, lr=0.05,
                                                 noise_multiplier=sigma, n_negatives=10))
        out.append(heads.image.weight.detach().clone())
    assert info == {"sample_rate": 0.2, "steps": 5}
    assert torch.equal(out[0], out[1]) and not torch.allclose(out[0], out[2])
    assert math.isfinite(float(out[2].abs().sum()))
    assert np.isfinite(out[0].numpy()).all()



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dp_training_on_cuda_matches_cpu_and_survives_empty_batches() -> None:
    """On a GPU: the noise and an empty Poisson batch stay on the heads' device; without noise the GPU run
    follows the CPU run (same batches) to float32 rounding."""
    out = {}
    for device in ("cpu", "cuda"):
        cpu = _data()
        data = TrainData(cpu.x_img.to(device), cpu.x_txt.to(device), cpu.unit.to(device), cpu.n_units,
                         cpu.bank.to(device))
        for sigma in (0.0, 1.5):
            torch.manual_seed(0)
            heads = LinearHeads(D_IMG, D_TXT, D, bias=True, logit_scale=5.0).to(device)
            # expected batch 1 of 40 pairs: about a third of the 40 Poisson batches are empty
            train_dp(heads, data, TrainConfig(objective="public-negatives", epochs=1, batch_size=1, lr=0.05,
                                              optimizer="sgd", noise_multiplier=sigma, n_negatives=10))
            out[device, sigma] = heads.image.weight.detach().cpu()
    torch.testing.assert_close(out["cuda", 0.0], out["cpu", 0.0], rtol=1e-3, atol=1e-4)
    assert torch.isfinite(out["cuda", 1.5]).all() and not torch.allclose(out["cuda", 1.5], out["cuda", 0.0])

# ---- train_heads / evaluate on a small fake embedding set (no model needed) ----

def _fake_set(n_patients: int = 60, seed: int = 0, d_pre: int = 12, d: int = 6):
    import pandas as pd

    from backend.embed.files import EmbeddingSet
    from backend.sources.schema import LABELS

    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(n_patients), 2)  # two pairs (one study each) per patient
    n = len(patient)
    labels = (rng.random((n, len(LABELS))) < 0.3).astype(np.float32)
    latent = rng.normal(size=(n, d_pre)).astype(np.float32)
    latent[:, :len(LABELS) - 2] += 2 * labels[:, :len(LABELS) - 2]
    image_feat = latent + 0.3 * rng.normal(size=(n, d_pre)).astype(np.float32)
    text_feat = latent + 0.3 * rng.normal(size=(n, d_pre)).astype(np.float32)
    heads = {"kind": "linear", "image_w": rng.normal(size=(d_pre, d)).astype(np.float32), "image_b": None,
             "text_b": None}
    heads["text_w"] = heads["image_w"].copy()
    meta = pd.DataFrame({"pair_id": [f"p{seed}-{i}" for i in range(n)], "study_id": [f"s{seed}-{i}" for i in range(n)],
                         "patient_id": [f"pt{seed}-{p}" for p in patient], "report": [f"report {seed}-{i}" for i in range(n)],
                         "view": "PA", "site": "x", "split": "train"})
    for j, name in enumerate(LABELS):
        meta[name] = labels[:, j]

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return EmbeddingSet(meta, unit(image_feat @ heads["image_w"]), unit(text_feat @ heads["text_w"]), image_feat, text_feat, heads)


def test_train_heads_records_privacy_for_each_mode() -> None:
    from backend.dp import train_heads
    from backend.specs import DPSpec

    train, bank = _fake_set(), np.random.default_rng(9).normal(size=(40, 12)).astype(np.float32)
    base = DPSpec(epochs=2, batch_size=30, lr=0.01, delta=1e-4, n_negatives=16)
    inf = train_heads(replace(base, epsilon=math.inf), train, None, device="cpu")
    assert inf.privacy["guarantee"] == "none" and inf.privacy["noise_multiplier"] == 0 and inf.privacy["epsilon"] == math.inf
    again = train_heads(replace(base, epsilon=math.inf), train, None, device="cpu")
    assert np.array_equal(inf.image_w, again.image_w)  # deterministic
    assert not np.allclose(inf.image_w, train.heads["image_w"])  # it did train, from the model's heads
    dp = train_heads(replace(base, epsilon=2.0, objective="public-negatives", privacy_unit="patient"), train, bank, device="cpu")
    p = dp.privacy
    assert p["guarantee"] == "certified" and p["privacy_unit"] == "patient" and p["n_units"] == 60
    assert p["sample_rate"] == pytest.approx(0.25) and p["steps"] == 8 and p["accountant"] == "rdp"
    assert 1.95 <= p["epsilon"] <= 2.0 and p["noise_multiplier"] > 0.5 and p["delta"] == 1e-4
    assert not np.allclose(dp.image_w, inf.image_w)


def test_invalid_specs_and_unreachable_budgets_are_clear_errors() -> None:
    from backend.dp import train_heads
    from backend.errors import PrivacyBudgetError, SpecError
    from backend.specs import DPSpec

    for kwargs, match in (({"epsilon": 0.0}, "epsilon must be > 0"), ({"epsilon": -1.0}, "epsilon"),
                          ({"delta": 0.0}, "delta"), ({"delta": 1.0}, "delta"), ({"max_grad_norm": 0.0}, "clipping"),
                          ({"objective": "clip"}, "objective"), ({"privacy_unit": "study"}, "privacy unit")):
        with pytest.raises(SpecError, match=match):
            DPSpec(**kwargs)
    with pytest.raises(PrivacyBudgetError, match="PRV"):
        train_heads(DPSpec(epsilon=1e-4, epochs=1, batch_size=30, delta=1e-4), _fake_set(), None, device="cpu")


def test_evaluate_returns_tidy_relink_and_probe_rows() -> None:
    from backend.dp import DPResult, headline_rows
    from backend.dp.eval import EvalInputs, evaluate
    from backend.specs import AuditSpec, DPSpec

    train, test, other = _fake_set(), _fake_set(seed=1), _fake_set(seed=2)
    prompts = np.random.default_rng(0).normal(size=(2, 14, 12)).astype(np.float32)
    inputs = EvalInputs(train, test, None, prompts[0], prompts[1], 10.0, {"other": other})
    audit = AuditSpec(n_bootstrap=5)
    rows, summary, probes = evaluate(train.heads, inputs, audit)
    assert set(rows["target"]) == {"in-domain", "other"} and set(summary) == {"in-domain", "other"}
    assert {"pool_kind", "k", "n", "recall", "ci_low", "ci_high"} <= set(rows.columns)
    assert set(probes["method"]) == {"linear-probe", "zero-shot"}
    res = DPResult(DPSpec(), "original", {"epsilon": math.inf}, rows, summary, probes)
    table = headline_rows([res])
    assert len(table) == 2 and (table["r1_random"] > 0).all() and table["probe_auroc"].between(0.5, 1).all()
    assert '"label": "original"' in res.to_json()


def test_cli_builds_the_dp_and_sweep_specs() -> None:
    from backend.__main__ import build_parser
    from backend.cli.dp import dp_spec_from

    args = build_parser().parse_args(["sweep", "--epsilons", "0.34", "1", "inf", "--objective", "public-negatives",
                                      "--privacy-unit", "patient", "--delta", "1e-6", "--source-option", "sites=A",
                                      "--transfer", "synthetic:sites=B,n_patients=300"])
    spec = dp_spec_from(args)
    assert args.epsilons == [0.34, 1.0, math.inf]
    assert spec.objective == "public-negatives" and spec.privacy_unit == "patient" and spec.delta == 1e-6
    assert spec.source.options == {"sites": "A"}
    assert spec.transfer[0].name == "synthetic" and spec.transfer[0].options == {"sites": "B", "n_patients": 300}
    dp_args = build_parser().parse_args(["dp", "--epsilon", "2", "--max-grad-norm", "0.5"])
    assert dp_spec_from(dp_args).epsilon == 2.0 and dp_spec_from(dp_args).max_grad_norm == 0.5


def test_public_bank_embeds_distinct_public_reports_once_and_caches() -> None:
    from types import SimpleNamespace

    from backend.dp.eval import public_bank
    from backend.specs import DPSpec, SourceSpec

    calls = []

    def encode(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(len(tokens))
        return tokens

    lm = SimpleNamespace(name="fake", weights_id="fake-1", device=torch.device("cpu"), encode_text_features=encode,
                         tokenizer=lambda texts: torch.tensor([[float(len(t)), float(t.count(" "))] for t in texts]))
    spec = DPSpec(objective="public-negatives", public_bank=SourceSpec("synthetic", options={"n_patients": 15, "seed": 5}))
    bank = public_bank(spec, lm)
    assert bank.shape[1] == 2 and bank.dtype == np.float32 and sum(calls) == len(bank) > 5
    again = public_bank(spec, lm)  # cached: no second encoding
    assert np.array_equal(bank, again) and sum(calls) == len(bank)
