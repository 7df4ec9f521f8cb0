"""The real models named in the brief, fetched into the cache by tests/fetch_models.py."""
import numpy as np
from fetch_models import real_model

import workbench
from workbench.progress import run
from workbench.stats import tensor_stats


def test_smollm2_gguf():
    m = workbench.open_model(real_model("smollm2"))
    assert m.format == "gguf" and m.architecture == "llama"
    assert len(m.tensors) == 272 and m.n_params == 134_515_008
    assert m.dtype_counts() == {"Q8_0": 1, "Q4_1": 210, "F32": 61}
    assert m.meta("llama.block_count") == 30 and m.meta("llama.attention.head_count_kv") == 3
    ftype = next(e for e in m.metadata["GGUF"] if e.key == "general.file_type")
    assert ftype.decoded == "MOSTLY_Q4_1"
    assert len(m.meta("tokenizer.ggml.tokens")) == 49152 and len(m.meta("tokenizer.ggml.merges")) == 48900
    assert list(m.layers())[:3] == [None, "blk.0", "blk.1"] and len(m.layers()) == 31
    q = m.tensor("blk.0.attn_q.weight").to_float32()
    assert q.shape == (576, 576) and np.isfinite(q).all() and 0.05 < q.std() < 1
    s = run(tensor_stats(m.tensor("blk.0.attn_norm.weight")))
    assert s.count == 576 and s.nan == 0


def test_tinycoder_gguf():
    m = workbench.open_model(real_model("tinycoder"))
    assert m.format == "gguf" and m.architecture == "llama" and len(m.tensors) == 21
    emb = m.tensor("token_embd.weight")
    assert emb.info.dtype == "F16" and emb.to_float32().shape == (32000, 16)


def test_minilm_folder():
    m = workbench.open_model(real_model("minilm"))
    assert m.format == "safetensors" and m.architecture == "BertModel"
    assert len(m.tensors) == 104 and m.n_params == 22_713_728
    assert m.meta("hidden_size", group="config.json") == 384
    tok = {e.key: e.value for e in m.metadata["tokenizer"]}
    assert tok["model"] == "WordPiece" and tok["vocab size"] == 30522
    assert list(m.layers())[1:3] == ["encoder.layer.0", "encoder.layer.1"]
    w = m.tensor("embeddings.word_embeddings.weight").to_float32()
    assert w.shape == (30522, 384)


def test_t5_lora_adapter():
    m = workbench.open_model(real_model("t5-lora"))
    assert m.format == "peft" and len(m.tensors) == 288
    adapter = {e.key: e.value for e in m.metadata["adapter"]}
    assert adapter["r"] == 16 and adapter["LoRA pairs"] == 144
    assert any("loftq_config" in w for w in m.warnings)
    a = m.tensor("base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight").to_float32()
    assert a.shape == (16, 1024)
