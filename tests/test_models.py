"""Model registry, fail-fast hub entries, local checkpoints, and head(features) == encoder output for every
supported tower family (tiny random configs, offline)."""

from __future__ import annotations

import re
import time

import open_clip
import pytest
import torch

from backend.errors import ModelUnavailableError
from backend.models import get_model, list_models, load_model
from backend.models.openclip import wrap_model
from backend.models.towers import image_head_slot, text_head_slot

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
VIT = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16}


def _tiny(vision: dict, text: dict = TEXT, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = open_clip.CustomTextCLIP if kw.pop("custom_text", False) else open_clip.CLIP
    return cls(embed_dim=24, vision_cfg=vision, text_cfg=text, **kw).eval()


FAMILIES = {
    "vit+clip-text": lambda: _tiny(VIT),
    "vit+quickgelu": lambda: _tiny(VIT, quick_gelu=True),
    "modified-resnet": lambda: _tiny({"image_size": 64, "layers": [1, 1, 1, 1], "width": 8}),
    "timm-linear": lambda: _tiny({"image_size": 32, "timm_model_name": "test_resnet", "timm_pool": "avg",
                                  "timm_proj": "linear", "timm_proj_bias": True}),
    "timm-mlp": lambda: _tiny({"image_size": 32, "timm_model_name": "test_resnet", "timm_pool": "avg",
                               "timm_proj": "mlp"}),
    "timm-classifier": lambda: _tiny({"image_size": 32, "timm_model_name": "test_resnet", "timm_pool": "avg",
                                      "timm_proj": ""}),
    "vit+text-transformer": lambda: _tiny(VIT, custom_text=True),
    "vit+text-linear-proj": lambda: _tiny(VIT, {**TEXT, "proj_type": "linear", "proj_bias": True}, custom_text=True),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_head_of_features_equals_encoder_output(family: str) -> None:
    model = FAMILIES[family]()
    lm = wrap_model(family, model, open_clip.SimpleTokenizer(context_length=16), torch.device("cpu"), "test")
    size = model.visual.image_size
    images = torch.randn(3, 3, *(size if isinstance(size, tuple) else (size, size)))
    tokens = lm.tokenizer(["no acute findings", "small left effusion", "heart size is enlarged"])
    with torch.no_grad():
        img_feat, txt_feat = lm.encode_image_features(images), lm.encode_text_features(tokens)
        img_ref, txt_ref = model.encode_image(images), model.encode_text(tokens)
        img_emb, txt_emb = lm.image_head(img_feat), lm.text_head(txt_feat)
    assert img_feat.shape[1] == lm.image_head.in_features and txt_feat.shape[1] == lm.text_head.in_features
    assert img_feat.shape[1] != img_ref.shape[1] or not torch.allclose(img_feat, img_ref)  # really pre-projection
    torch.testing.assert_close(img_emb, img_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(txt_emb, txt_ref, rtol=1e-4, atol=1e-5)
    # the swap is undone: the model still projects
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), img_ref)
    heads = lm.head_arrays()
    w, b = heads["image_w"], heads["image_b"]
    ref = img_feat.numpy() @ w + (0 if b is None else b)
    assert abs(ref - img_ref.numpy()).max() < 1e-4


def test_head_slots_name_the_documented_parameters() -> None:
    vit = _tiny(VIT)
    assert image_head_slot(vit.visual).attr == "proj" and text_head_slot(vit).attr == "text_projection"
    rn = FAMILIES["modified-resnet"]()
    assert image_head_slot(rn.visual).attr == "c_proj"
    mlp = FAMILIES["timm-mlp"]()
    assert image_head_slot(mlp.visual).attr == "fc2"
    bare = _tiny({"image_size": 32, "timm_model_name": "test_resnet", "timm_pool": "avg", "timm_proj": "none"})
    with pytest.raises(ModelUnavailableError, match="no supported projection head"):
        image_head_slot(bare.visual)


def test_registry_lists_the_ladder_of_specialisation() -> None:
    names = [m.name for m in list_models()]
    for expected in ("demo", "openai-vit-b-16", "biomedclip", "chexzero"):
        assert expected in names
    assert {m.domain for m in list_models()} >= {"synthetic", "general", "biomedical", "chest x-ray"}
    with pytest.raises(ModelUnavailableError, match="Known models"):
        get_model("no-such-model")
    assert get_model("local:/tmp/x.pt#ViT-B-32").domain == "any"


@pytest.mark.parametrize("name", ["openai-vit-b-16", "biomedclip"])
def test_hub_entries_fail_fast_offline(name: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        load_model(name, device="cpu")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "offline" in msg and "local:" in msg and "cache" in msg


def test_chexzero_needs_a_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("CXR_CHEXZERO_CKPT", raising=False)
    with pytest.raises(ModelUnavailableError, match="CXR_CHEXZERO_CKPT"):
        load_model("chexzero", device="cpu")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_model("chexzero", device="cpu", checkpoint=str(tmp_path / "missing.pt"))


def test_chexzero_loads_an_openai_format_state_dict(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # An OpenAI-CLIP-layout state dict of a tiny ViT (width 64 -> 1 head, as the OpenAI builder infers)
    src = _tiny({"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}, quick_gelu=True)
    path = tmp_path / "chexzero.pt"
    torch.save(src.state_dict(), path)
    monkeypatch.setenv("CXR_CHEXZERO_CKPT", str(path))
    lm = load_model("chexzero", device="cpu")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(lm.model.encode_image(images), src.encode_image(images), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(lm.image_head(lm.encode_image_features(images)), lm.model.encode_image(images))
    assert "0.39" in lm.preprocess_id  # CheXzero's own normalisation, not ImageNet's


def test_local_checkpoint_with_config(tmp_path) -> None:
    model = open_clip.create_model("cxr-demo-tiny", pretrained_text=False)
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    lm = load_model(f"local:{path}#cxr-demo-tiny", device="cpu")
    key = "visual.conv1.weight"
    assert torch.equal(lm.model.state_dict()[key], model.state_dict()[key])
    with pytest.raises(ModelUnavailableError, match="#<open_clip config>"):
        load_model(f"local:{path}", device="cpu")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_model(f"local:{tmp_path / 'nope.pt'}#cxr-demo-tiny", device="cpu")
    with pytest.raises(ModelUnavailableError, match="Unknown open_clip config"):
        load_model(f"local:{path}#no-such-config", device="cpu")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    wrong = tmp_path / "wrong-arch.pt"  # a real checkpoint of another architecture
    torch.save(open_clip.create_model("cxr-demo", pretrained_text=False).state_dict(), wrong)
    for bad in (garbage, wrong):  # about the file, never the network or the Hugging Face cache
        with pytest.raises(ModelUnavailableError, match=f"the checkpoint {re.escape(str(bad))} could not be loaded") as err:
            load_model(f"local:{bad}#cxr-demo-tiny", device="cpu")
        assert "network" not in str(err.value) and "Hugging Face" not in str(err.value)


def test_hf_text_encoder_head(tmp_path) -> None:
    pytest.importorskip("transformers", reason="HFTextEncoder needs transformers (not a project dependency)")
    from transformers import BertConfig

    cfg_dir = tmp_path / "bert"
    BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(cfg_dir)
    model = _tiny(VIT, {"hf_model_name": str(cfg_dir), "hf_model_pretrained": False, "hf_proj_type": "mlp",
                        "hf_pooler_type": "cls_pooler", "context_length": 16}, custom_text=True)
    lm = wrap_model("hf", model, lambda t: torch.randint(0, 100, (len(t), 16)), torch.device("cpu"), "t")
    tokens = torch.randint(1, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(lm.text_head(lm.encode_text_features(tokens)), model.encode_text(tokens))


class HFTextEncoder(torch.nn.Module):
    """Stands in for open_clip's HFTextEncoder (same attribute layout: a pooled transformer output -> proj)
    so the slot logic is tested without the optional transformers package."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Embedding(100, 16)
        self.proj = torch.nn.Sequential(torch.nn.Linear(16, 20, bias=False), torch.nn.GELU(),
                                        torch.nn.Linear(20, 24, bias=False))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(tokens).mean(dim=1))


def test_hf_style_mlp_projection_head_is_its_last_linear() -> None:
    model = _tiny(VIT, custom_text=True)
    model.text = HFTextEncoder()
    lm = wrap_model("hf-like", model, lambda t: torch.randint(0, 100, (len(t), 8)), torch.device("cpu"), "t")
    assert lm.text_slot.attr == "2" and lm.text_head.in_features == 20
    tokens = torch.randint(0, 100, (3, 8))
    with torch.no_grad():
        torch.testing.assert_close(lm.text_head(lm.encode_text_features(tokens)), model.encode_text(tokens))


def test_hub_entries_fail_fast_online_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_OFFLINE", "CXR_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1")  # nothing listens on 443 here: refused at once
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        load_model("openai-vit-b-16", device="cpu")
    assert time.perf_counter() - start < 5
