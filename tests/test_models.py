"""Models: the embedded model matches its GGUF source, the tiny twin is reproducible, LoRA and adapters behave."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from nlu_helpers import models
from nlu_helpers.assets import SMOLLM2_WHEEL

PROMPT = "Is the following review positive or negative?\nReview: a warm, funny film.\nAssistant: <Judgement>"


@pytest.fixture(scope="module")
def embedded_dir():
    return models.embedded_model_dir()


@pytest.fixture(scope="module")
def tiny_dir(embedded_dir):
    return models.tiny_model_dir()


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    return models.load_tokenizer(models.EMBEDDED_MODEL)


def test_embedded_model_loads_offline_and_matches_the_gguf(embedded_dir, tokenizer):
    note = json.loads((embedded_dir / models.MARKER).read_text())
    assert note["source"]["sha256"] == SMOLLM2_WHEEL.sha256
    assert note["source"]["archive"] == SMOLLM2_WHEEL.filename
    assert models.embedded_model_dir() == embedded_dir  # second call: no rebuild

    model = models.load_model(models.EMBEDDED_MODEL, device="cpu")
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.tie_word_embeddings and model.config.vocab_size == 49152
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids

    with models._extracted_gguf() as gguf:
        reference, gguf_tokenizer = models._load_gguf(gguf)
    assert gguf_tokenizer(PROMPT).input_ids == ids[0].tolist()
    with torch.no_grad():
        expected = reference(ids).logits
        actual = model(ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)

    batch = tokenizer([PROMPT, "The capital of France is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    texts = tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    assert all(text.strip() for text in texts)


def test_tokenizer_pads_left_with_eos(tokenizer):
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == 2
    batch = tokenizer(["a", "a much longer text here"], padding=True)
    assert batch.input_ids[0][0] == tokenizer.pad_token_id and batch.attention_mask[0][0] == 0
    assert models.load_tokenizer(models.TINY_MODEL, padding_side="right").padding_side == "right"
    with pytest.raises(ValueError, match="'middle'.*'left', 'right'"):
        models.load_tokenizer(models.TINY_MODEL, padding_side="middle")


def test_resolve_model(embedded_dir, tiny_dir, tmp_path):
    assert models.resolve_model("embedded") == str(embedded_dir)
    assert models.resolve_model("tiny-random") == str(tiny_dir)
    assert models.resolve_model(tmp_path) == str(tmp_path.resolve())
    assert models.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    with pytest.raises(FileNotFoundError, match="no/such/folder"):
        models.resolve_model(str(tmp_path / "no/such/folder"))


def test_tiny_model_has_the_embedded_architecture_and_real_tokenizer(embedded_dir, tiny_dir, tokenizer):
    model = models.load_model(models.TINY_MODEL, device="cpu")
    big = LlamaConfig.from_pretrained(embedded_dir)
    assert isinstance(model, LlamaForCausalLM)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert (config.num_key_value_heads, config.intermediate_size) == (2, 128)
    assert config.vocab_size == big.vocab_size == len(tokenizer)
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "rope_parameters", "rms_norm_eps"):
        assert getattr(config, key) == getattr(big, key)
    tiny_tokenizer = models.load_tokenizer(models.TINY_MODEL)
    assert tiny_tokenizer.get_vocab() == tokenizer.get_vocab()

    batch = tiny_tokenizer([PROMPT, "short"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch.input_ids.shape[1], big.vocab_size)
    assert torch.isfinite(logits).all()
    _, total = models.trainable_parameters(model)
    assert total < 5_000_000


def test_tiny_model_is_the_same_on_every_build(embedded_dir, tmp_path, monkeypatch):
    built = []
    for name in ("first", "second"):
        cache = tmp_path / name
        (cache / "models").mkdir(parents=True)
        (cache / "models" / models.EMBEDDED_DIRNAME).symlink_to(embedded_dir)  # no second conversion
        monkeypatch.setenv("NLU_WORKBOOK_CACHE", str(cache))
        folder = models.tiny_model_dir()
        assert folder == cache / "models" / models.TINY_DIRNAME
        built.append(load_file(folder / "model.safetensors"))
    assert built[0].keys() == built[1].keys()
    for key in built[0]:
        assert torch.equal(built[0][key], built[1][key]), key
    leftovers = [p.name for p in (tmp_path / "first" / "models").iterdir() if "building" in p.name]
    assert leftovers == []


def test_lora_defaults_target_q_and_v_and_train_only_lora(tiny_dir):
    config = models.lora_config()
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_rslora) == (16, 32, 0.05, True)
    assert config.bias == "none" and config.task_type == "CAUSAL_LM"
    peft_model = models.add_lora(models.load_model(models.TINY_MODEL, device="cpu"), config)
    assert not peft_model.training  # the mode load_model gave it, not PEFT's train mode
    assert set(peft_model.peft_config["default"].target_modules) == {"q_proj", "v_proj"}
    trainable_names = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable_names and all("lora_" in name for name in trainable_names)
    assert {name.split(".lora_")[0].rsplit(".", 1)[1] for name in trainable_names} == {"q_proj", "v_proj"}
    trainable, total = models.trainable_parameters(peft_model)
    assert trainable == sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert 0 < trainable < total

    every = models.add_lora(models.load_model(models.TINY_MODEL, device="cpu"), models.lora_config(target_modules="all-linear"))
    adapted = {name.rsplit(".", 1)[-1] for name in every.peft_config["default"].target_modules}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with pytest.raises(ValueError, match="'some'.*none, all, lora_only"):
        models.lora_config(bias="some")


@pytest.fixture
def saved_adapter(tiny_dir, tmp_path, tokenizer):
    """A tiny-model adapter with non-zero weights, its folder, and its logits on PROMPT."""
    peft_model = models.add_lora(models.load_model(models.TINY_MODEL, device="cpu"), models.lora_config())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapter actually change the output
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(folder)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = peft_model(ids).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(ids).logits
    assert not torch.allclose(logits, base_logits)
    return folder, ids, logits


def test_saved_adapter_reloads_with_the_same_logits(saved_adapter):
    folder, ids, expected = saved_adapter
    model = models.load_model(models.TINY_MODEL, device="cpu", adapter=folder)
    assert not model.training
    assert models.trainable_parameters(model)[0] == 0
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected)
    trainable = models.load_model("tiny-random", device="cpu", adapter=str(folder), trainable_adapter=True)
    count, _ = models.trainable_parameters(trainable)
    assert count == sum(p.numel() for n, p in trainable.named_parameters() if "lora_" in n) > 0


def test_adapter_on_another_base_is_refused(saved_adapter, tmp_path):
    folder, _, _ = saved_adapter
    other = tmp_path / "other-tiny"
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(other)
    recorded = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    with pytest.raises(ValueError, match="other-tiny") as error:
        models.load_model(other, device="cpu", adapter=folder)
    assert recorded in str(error.value)
    with pytest.raises(ValueError, match="SmolLM2-360M"):
        models.load_model("HuggingFaceTB/SmolLM2-360M-Instruct", adapter=folder)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        models.load_model(models.TINY_MODEL, adapter=tmp_path)


def test_adapter_base_names_compare_sensibly(tiny_dir, embedded_dir):
    identity = models._identity
    assert identity("tiny-random") == identity(tiny_dir) == identity("/content/cache/models/tiny-random-smollm2")
    assert identity("embedded") == identity(str(embedded_dir)) != identity("tiny-random")
    assert identity("HuggingFaceTB/SmolLM2-135M-Instruct") == identity("huggingfacetb/smollm2-135m-instruct")
    assert identity("HuggingFaceTB/SmolLM2-135M-Instruct") != identity("embedded")


def test_four_bit_on_cpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="4-bit|load_in_4bit") as error:
        models.load_model(models.TINY_MODEL, device="cpu", load_in_4bit=True)
    assert "CUDA GPU" in str(error.value) and "bitsandbytes" in str(error.value)


def test_pick_device_and_dtype():
    assert models.pick_device("cpu") == torch.device("cpu")
    assert models.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert models.pick_dtype("auto", "cpu") == torch.float32
    assert models.pick_dtype("bf16") == models.pick_dtype("bfloat16") == torch.bfloat16
    assert models.pick_dtype("fp16") == models.pick_dtype("float16") == torch.float16
    assert models.pick_dtype("fp32") == models.pick_dtype(torch.float32) == torch.float32
    for bad in ("gpu", "tpu", "cuda-ish"):
        with pytest.raises(ValueError, match=f"'{bad}'.*auto, cpu, cuda, cuda:N, mps"):
            models.pick_device(bad)
    with pytest.raises(ValueError, match="'int8'.*auto, bf16, bfloat16, fp16, float16.*fp32"):
        models.pick_dtype("int8")
    with pytest.raises(ValueError, match="torch.int8"):
        models.pick_dtype(torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            models.pick_device("cuda")


def test_describe_hardware():
    info = models.describe_hardware()
    assert {"device", "cuda", "name", "memory_gib", "bf16"} <= set(info)
    assert info["cuda"] == torch.cuda.is_available()
    assert info["memory_gib"] is None or info["memory_gib"] > 0
    json.dumps(info)


def test_interrupted_conversion_leaves_no_half_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NLU_WORKBOOK_CACHE", str(tmp_path))

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_extracted_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.embedded_model_dir()
    assert list((tmp_path / "models").iterdir()) == []


# --------------------------------------------------------------------------- no hub: fail in seconds

HUB_SCRIPT = """
import json, sys, time
from nlu_helpers import models
report = {}
start = time.perf_counter()
try:
    models.load_model("someone/not-cached-anywhere")
except models.HubUnreachable as error:
    report["error"] = str(error)
report["failed_after_s"] = time.perf_counter() - start
start = time.perf_counter()
tokenizer = models.load_tokenizer("someone/cached-tiny")
model = models.load_model("someone/cached-tiny")
report["cached_loaded_after_s"] = time.perf_counter() - start
report["cached_layers"] = model.config.num_hidden_layers
print(json.dumps(report))
"""


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free, and nothing listens there once closed


def test_a_hub_id_without_the_hub_fails_in_seconds_and_a_cached_one_loads(tiny_dir, tmp_path):
    """Before: ~50 s of retry lines, then an OSError naming neither the model nor offline work."""
    import shutil
    import subprocess
    import sys

    hub_cache = tmp_path / "hf" / "hub"  # a Hugging Face cache holding one model: the tiny one
    snapshot = hub_cache / "models--someone--cached-tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    done = subprocess.run([sys.executable, "-c", HUB_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failed_after_s"] < 20, report  # before: ~50 s
    for words in ("'someone/not-cached-anywhere'", "can't be reached", "'embedded'", "local model folder", "HF_HUB_OFFLINE=1"):
        assert words in report["error"], (words, report["error"])
    assert report["cached_loaded_after_s"] < 20 and report["cached_layers"] == models.TINY_SIZES["num_hidden_layers"]
    assert "Retrying" not in done.stderr


def test_offline_mode_names_the_model_missing_from_the_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(models.HubUnreachable, match=r"'someone/absent'.*HF_HUB_OFFLINE=1.*'embedded', 'tiny-random'"):
        models.load_tokenizer("someone/absent")


# --------------------------------------------------------------------------- native bf16 only


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_is_chosen_only_where_it_is_native(monkeypatch, capability, native):
    """A T4 (7.5) emulates bf16 and torch.cuda.is_bf16_supported() says yes there; we want fp16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # torch's own answer on such a GPU: native from compute capability 8.0, emulated (yes) below
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or capability >= (8, 0))
    assert models.native_bf16() is native
    assert models.pick_dtype("auto", torch.device("cuda")) == (torch.bfloat16 if native else torch.float16)
