"""workbench.hfcache: models found in a fake Hugging Face hub cache laid out like huggingface_hub's."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from workbench import Cancelled
from workbench.hfcache import hub_cache_dir, repo_id_from_dir, scan_hub_cache
from workbench.progress import run


def _blob(repo: Path, name: str, size: int) -> Path:
    blob = repo / "blobs" / f"{name}-{size}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"x" * size)
    return blob


def _snapshot(cache: Path, repo_id: str, rev: str, files: dict[str, int], ref: bool = True,
              mtime: float | None = None) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / rev
    for rel, size in files.items():
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        blob = _blob(repo, rel.replace("/", "_") + rev, size)
        os.symlink(os.path.relpath(blob, link.parent), link)
        if mtime is not None:
            os.utime(blob, (mtime, mtime))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(rev)
    return snap


@pytest.fixture
def cache(tmp_path) -> Path:
    c = tmp_path / "hub"
    _snapshot(c, "org/bert-mini", "aaa111", {"config.json": 10, "model.safetensors": 1000, "tokenizer.json": 90},
              mtime=1_000)
    _snapshot(c, "TheBloke/Tiny-GGUF", "bbb222", {"tiny.Q4_0.gguf": 300, "tiny.Q8_0.gguf": 500, "README.md": 7},
              mtime=3_000)
    _snapshot(c, "org/split", "ccc333", {"m-00001-of-00002.gguf": 40, "m-00002-of-00002.gguf": 60}, mtime=2_000)
    _snapshot(c, "org/readme-only", "ddd444", {"README.md": 5})
    # two revisions: refs/main names the second one
    _snapshot(c, "org/two", "old000", {"model.safetensors": 11}, ref=False, mtime=500)
    _snapshot(c, "org/two", "new999", {"model.safetensors": 22}, mtime=400)
    (c / "datasets--org--data" / "snapshots" / "r1").mkdir(parents=True)
    (c / "datasets--org--data" / "snapshots" / "r1" / "config.json").write_text("{}")
    (c / ".locks").mkdir()
    return c


def test_scan_lists_folders_ggufs_and_split_sets(cache):
    found = run(scan_hub_cache(cache))
    by_label = {m.label: m for m in found}
    assert set(by_label) == {"org/bert-mini", "TheBloke/Tiny-GGUF · tiny.Q4_0.gguf",
                             "TheBloke/Tiny-GGUF · tiny.Q8_0.gguf", "org/split · m-00001-of-00002.gguf", "org/two"}
    bert = by_label["org/bert-mini"]
    assert bert.kind == "folder" and bert.size == 1100 and bert.revision == "aaa111"
    assert bert.path == cache / "models--org--bert-mini" / "snapshots" / "aaa111"
    q8 = by_label["TheBloke/Tiny-GGUF · tiny.Q8_0.gguf"]
    assert q8.kind == "gguf" and q8.size == 500 and q8.path.name == "tiny.Q8_0.gguf" and q8.path.is_file()
    assert by_label["org/split · m-00001-of-00002.gguf"].size == 100  # the whole set
    two = by_label["org/two"]
    assert two.revision == "new999" and two.size == 22  # refs/main wins over the newer files
    # most recently downloaded first
    assert [m.repo_id for m in found][:4] == ["TheBloke/Tiny-GGUF", "TheBloke/Tiny-GGUF", "org/split", "org/bert-mini"]


def test_all_revisions_and_dangling_links(cache):
    found = run(scan_hub_cache(cache, all_revisions=True))
    assert sorted(m.revision for m in found if m.repo_id == "org/two") == ["new999", "old000"]
    blob = next((cache / "models--org--bert-mini" / "blobs").glob("model.safetensors*"))
    blob.unlink()  # a partly deleted cache: the link dangles
    bert = next(m for m in run(scan_hub_cache(cache)) if m.repo_id == "org/bert-mini")
    assert bert.size == 100


def test_progress_and_cancel(cache):
    job = scan_hub_cache(cache)
    first = next(job)
    assert first.total == 5 and first.done == 0 and "Hugging Face cache" in first.message
    calls = iter([False, True])
    with pytest.raises(Cancelled):
        run(scan_hub_cache(cache, cancel=lambda: next(calls)))


def test_missing_cache_is_empty(tmp_path):
    assert run(scan_hub_cache(tmp_path / "none")) == []
    (tmp_path / "file").write_text("")
    assert run(scan_hub_cache(tmp_path / "file")) == []


def test_cache_location_from_the_environment(tmp_path):
    assert hub_cache_dir({"HF_HUB_CACHE": str(tmp_path / "a"), "HF_HOME": "/x"}) == tmp_path / "a"
    assert hub_cache_dir({"HF_HOME": str(tmp_path / "h")}) == tmp_path / "h" / "hub"
    assert hub_cache_dir({"XDG_CACHE_HOME": str(tmp_path / "c")}) == tmp_path / "c" / "huggingface" / "hub"
    assert hub_cache_dir({}) == Path.home() / ".cache" / "huggingface" / "hub"


def test_repo_ids():
    assert repo_id_from_dir("models--org--name") == "org/name"
    assert repo_id_from_dir("models--gpt2") == "gpt2"
    assert repo_id_from_dir("datasets--org--x") is None and repo_id_from_dir("models--") is None


def test_find_cached_folder_names_the_snapshot_refs_main_points_at(tmp_path):
    from builders import build_hf_folder
    from workbench.hfcache import find_cached_folder

    repo = tmp_path / "models--org--tiny"
    for rev in ("old111", "new222"):
        build_hf_folder(repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("old111")
    assert find_cached_folder("org/tiny", tmp_path) == repo / "snapshots" / "old111"
    (repo / "refs" / "main").write_text("gone")  # a dangling ref: any snapshot holding a model
    assert find_cached_folder("org/tiny", tmp_path).parent == repo / "snapshots"
    (tmp_path / "models--org--empty" / "snapshots" / "x").mkdir(parents=True)
    for missing in ("org/empty", "org/absent", "../org/tiny", "org/../tiny", "/etc", "", None, 3):
        assert find_cached_folder(missing, tmp_path) is None, missing
