"""imatrix statistics against what llama-imatrix --show-statistics printed for the same files (recorded by
tests/core/data/make_imatrix_stats_fixtures.py), to its printed precision."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workbench.optimize.imatrix import Imatrix, ImatrixEntry
from workbench.optimize.imatrix_stats import (layer_statistics, parse_name, sort_stats, statistics)

DATA = Path(__file__).parent / "data"
FIXTURE = json.loads((DATA / "imatrix_stats" / "llama_imatrix_stats.json").read_text())


def printed(t) -> list[str]:
    """A row as llama-imatrix prints it (its printf formats; percent columns are float32 products)."""
    return [t.layer, t.kind, f"{t.sum:.2f}", f"{t.min:.4f}", f"{t.max:.4f}", f"{t.mean:.2f}", f"{t.std:.2f}",
            f"{100 * np.float32(t.active):.2f}%", str(t.n), f"{t.entropy:.4f}", f"{t.entropy_norm:.2f}%",
            f"{100 * np.float32(t.zd):.2f}%", f"{t.cossim:.4f}"]


@pytest.mark.parametrize("rel", sorted(FIXTURE))
def test_statistics_equal_llama_imatrix(rel):
    im = Imatrix.load(DATA / rel)
    stats = statistics(im)
    want = FIXTURE[rel]
    assert [printed(t) for t in stats] == want["tensors"]  # same rows, same order (kind, then Σ descending)
    layers = [[str(s.block), f"{s.sum:.2f}", f"{100 * np.float32(s.zd):.4f}%", f"{s.cossim:.4f}"]
              for s in layer_statistics(stats)]
    assert layers == want["layers"]


def test_moe_counts_and_names():
    im = Imatrix.load(DATA / "imatrix_stats" / "moe.imatrix.gguf")
    stats = {t.name: t for t in statistics(im)}
    assert "blk.1.ffn_gate_exps.weight" not in stats  # no expert saw a token: no row, as in llama-imatrix
    up = stats["blk.0.ffn_up_exps.weight"]
    assert (up.n, up.n_experts) == (3 * 32, 4)  # the expert with count 0 is left out
    e = im.entries["blk.0.ffn_up_exps.weight"]
    act = (e.sums[[0, 2, 3]] / e.counts[[0, 2, 3], None]).astype(np.float64)
    assert up.sum == pytest.approx(act.sum(), rel=1e-5)
    assert up.active == pytest.approx(1 - 9 / 96)  # 3 zero columns in 3 experts
    assert stats["output.weight"].block == -1 and stats["output.weight"].layer == "-"


def test_hand_computed_entry():
    # activations 0, 1, 2, 5: Σ 8, μ 2, σ √(30/4 − 4), entropy of (1/8, 2/8, 5/8), one value above μ + σ
    im = Imatrix({"blk.3.attn_v.weight": ImatrixEntry(np.array([[0, 2, 4, 10]], np.float32), np.array([2]))})
    (t,) = statistics(im)
    p = np.array([1, 2, 5]) / 8
    assert (t.layer, t.block, t.kind, t.n) == ("3", 3, "attn_v", 4)
    assert (t.sum, t.min, t.max, t.mean) == (8.0, 0.0, 5.0, 2.0)
    assert t.std == pytest.approx(np.sqrt(3.5), rel=1e-6)
    assert t.entropy == pytest.approx(-(p * np.log2(p)).sum(), rel=1e-6)
    assert t.entropy_norm == pytest.approx(100 * t.entropy / 2, rel=1e-6)
    assert (t.active, t.zd, t.cossim) == (0.75, 0.25, 0.0)


def test_parse_name_and_sort():
    assert parse_name("blk.12.ffn_down_exps.weight") == ("12", "ffn_down_exps")
    assert parse_name("token_embd.weight") == ("-", "token_embd")
    assert parse_name("rope_freqs") == ("-", "rope_freqs")
    stats = statistics(Imatrix.load(DATA / "imatrix" / "tiny.imatrix.gguf"))
    by_sum = sort_stats(stats, "sum")
    assert [t.sum for t in by_sum] == sorted((t.sum for t in stats), reverse=True)
    assert by_sum[0].name == "blk.1.ffn_down.weight"
    assert [t.block for t in sort_stats(stats, "layer")] == [0] * 7 + [1] * 7
    with pytest.raises(ValueError):
        sort_stats(stats, "bogus")


def test_cli_json_and_table(capsys):
    from workbench.cli import main

    path = DATA / "imatrix" / "tiny.imatrix.gguf"
    assert main(["imatrix-stats", str(path), "--json", "--sort", "sum"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in out["tensors"]][:2] == ["blk.1.ffn_down.weight", "blk.0.ffn_down.weight"]
    want = {r[0] + r[1]: r for r in FIXTURE["imatrix/tiny.imatrix.gguf"]["tensors"]}
    for t in out["tensors"]:
        assert f"{t['sum']:.2f}" == want[t["layer"] + t["kind"]][2]
    assert main(["imatrix-stats", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(ln for ln in lines if ln.split()[:2] == ["1", "attn_output"])
    assert row.split()[2:] == FIXTURE["imatrix/tiny.imatrix.gguf"]["tensors"][3][2:]
