import pytest

from workbench.naming import GGUFName, name_for_model, parse_gguf_name, validate_gguf_name


@pytest.mark.parametrize("filename, parts", [
    ("Mixtral-8x7B-v0.1-KQ2.gguf", ("Mixtral", "8x7B", None, "v0.1", "KQ2", None, None)),
    ("Hermes-2-Pro-Llama-3-8B-F16.gguf", ("Hermes-2-Pro-Llama-3", "8B", None, None, "F16", None, None)),
    ("Grok-100B-v1.0-Q4_0-00003-of-00009.gguf", ("Grok", "100B", None, "v1.0", "Q4_0", None, (3, 9))),
    ("SmolLM2-135M-Instruct-v1.0-Q4_K_M.gguf", ("SmolLM2", "135M", "Instruct", "v1.0", "Q4_K_M", None, None)),
    ("Phi-3-mini-3.8B-ContextLength4k-instruct-v1.0-IQ4_XS-LoRA.gguf",
     ("Phi-3-mini", "3.8B", "ContextLength4k-instruct", "v1.0", "IQ4_XS", "LoRA", None)),
    ("llama-vocab.gguf", ("llama", None, None, None, None, "vocab", None)),
])
def test_parse(filename, parts):
    n = parse_gguf_name(filename)
    assert (n.base_name, n.size_label, n.finetune, n.version, n.encoding, n.type, n.shard) == parts


@pytest.mark.parametrize("name", [
    GGUFName("SmolLM2", "135M", "Instruct", "v1.0", "Q4_K_M"),
    GGUFName("Mixtral", "8x7B", None, "v0.1", "Q8_0", None, (2, 3)),
    GGUFName("Bias-Detector", "770M", None, "v1.0", "F16", "LoRA"),
])
def test_format_then_parse_round_trips(name):
    assert parse_gguf_name(name.filename()) == name


def test_shards_are_five_digits():
    n = GGUFName("Model", "7B", None, "v1.0", "Q4_0").with_shard(2, 12)
    assert n.filename() == "Model-7B-v1.0-Q4_0-00002-of-00012.gguf"


def test_validation():
    assert validate_gguf_name("Model-7B-v1.0-Q4_0.gguf") == []
    assert "no version (e.g. v1.0)" in validate_gguf_name("Model-7B-Q4_0.gguf")
    assert "no size label (e.g. 7B, 8x7B, 135M)" in validate_gguf_name("model-q4_0.gguf")
    assert validate_gguf_name("model.bin") == ["'model.bin' is not a .gguf file name"]
    assert "shard 4 of 3 is out of range" in validate_gguf_name("M-7B-v1.0-F16-00004-of-00003.gguf")


def test_name_from_metadata():
    meta = {"general.basename": "SmolLM2", "general.finetune": "Instruct", "general.version": "1.0"}
    n = name_for_model(meta, "q4_k_m", n_params=134_515_008)
    assert n.filename() == "SmolLM2-135M-Instruct-v1.0-Q4_K_M.gguf"
    assert name_for_model({"general.name": "My Model", "general.size_label": "7B"}, "F16").filename() == \
        "My-Model-7B-F16.gguf"
