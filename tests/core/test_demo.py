import hashlib

import numpy as np

import workbench
from workbench.demo import demo_model_path


def test_demo_model_is_generated_once_and_deterministic(demo_cache):
    p = demo_model_path()
    assert p.is_file() and demo_cache in p.parents
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    mtime = p.stat().st_mtime_ns
    assert demo_model_path() == p and p.stat().st_mtime_ns == mtime  # not rewritten
    p.unlink()
    assert hashlib.sha256(demo_model_path().read_bytes()).hexdigest() == digest
    assert not list(p.parent.glob("*.partial"))


def test_demo_model_contents(demo_cache):
    m = workbench.open_model(demo_model_path())
    assert m.format == "gguf" and m.architecture == "llama"
    assert {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "F32"} == set(m.dtype_counts())
    assert list(m.layers()) == [None, "blk.0", "blk.1"]
    assert m.meta("tokenizer.ggml.model") == "gpt2" and len(m.meta("tokenizer.ggml.tokens")) == 320
    emb = m.tensor("token_embd.weight").to_float32()
    assert emb.shape == (320, 128) and np.isfinite(emb).all() and 0.03 < emb.std() < 0.07
