"""Tokenizers: GGUF vocabularies against llama.cpp's tokenizer test vectors and llama-tokenize, tokenizer.json
folders, streaming decode, chat templates, and the tokenizer.json the GGUF -> HF export writes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import workbench
from fetch_models import real_model
from workbench.errors import MissingFileError, UnsupportedError
from workbench.infer.chat import FALLBACK_TEMPLATE, TemplateError, apply_chat_template
from workbench.infer.tokenizer import (IncrementalDecoder, _bpe_from_doc, folder_tokenizer, gguf_tokenizer,
                                       gguf_tokenizer_json, load_tokenizer, read_gguf_vocab, spm_merges)

DATA = Path(__file__).parent / "data" / "tokenizer_vectors"
sys.path.insert(0, str(DATA))
from make_fixtures import MIXED_VOCABS, gemma3_vocab_path, read_inputs, write_t5_vocab, write_vocab  # noqa: E402

# Every llama.cpp test-vector vocabulary of llama-cpp-python 0.3.36 (models/ggml-vocab-*.gguf.inp/.out) and the
# cases we pass.  All of them pass 100%; a vocabulary with known gaps would be listed in GAPS with the reason.
CLAIMED = {
    "bert-bge": 46, "command-r": 46, "deepseek-coder": 46, "deepseek-llm": 46, "falcon": 46, "gemma-4": 46,
    "gpt-2": 46, "llama-bpe": 46, "llama-spm": 46, "mpt": 46, "phi-3": 46, "qwen2": 46, "qwen35": 50,
    "refact": 46, "starcoder": 46,
}
GAPS: dict[str, str] = {}

_TOKENIZERS: dict[str, object] = {}


def vocab_dir() -> Path:
    return real_model("llama-vocabs")


def vocab_tokenizer(name: str):
    """The tokenizer of a llama.cpp vocab GGUF (``gemma3``: Gemma 3's 262k SentencePiece vocabulary, made once
    from Gemma 4's into the test cache), built once per test session."""
    if name not in _TOKENIZERS:
        path = vocab_dir() / f"ggml-vocab-{name}.gguf" if name != "gemma3" else (vocab_dir(), gemma3_vocab_path())[1]
        _TOKENIZERS[name] = gguf_tokenizer(workbench.open_model(path))
    return _TOKENIZERS[name]


def vector_cases(name: str) -> list[tuple[str, list[int]]]:
    """test-tokenizer-0's cases: inputs split on the separator line, one line of ids per input."""
    folder = vocab_dir()
    inputs = read_inputs(folder / f"ggml-vocab-{name}.gguf.inp")
    lines = (folder / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    lines = lines[:len(inputs)]
    assert len(lines) == len(inputs)
    return [(text, [int(x) for x in line.split()]) for text, line in zip(inputs, lines)]


# -- llama.cpp's test vectors --------------------------------------------------------------------------------

@pytest.mark.realmodel
def test_every_vector_vocabulary_is_claimed_or_a_listed_gap():
    found = sorted(p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in vocab_dir().glob("ggml-vocab-*.gguf.inp"))
    assert found and set(found) == set(CLAIMED) | set(GAPS)


@pytest.mark.realmodel
@pytest.mark.parametrize("name", sorted(CLAIMED))
def test_vocab_vectors(name):
    """Tokens as llama.cpp's test-tokenizer-0 checks them: no BOS/EOS, special tokens not parsed."""
    tok = vocab_tokenizer(name)
    cases = vector_cases(name)
    failed = [(text, ids, tok.encode(text, add_special=False, parse_special=False)) for text, ids in cases]
    failed = [f for f in failed if f[1] != f[2]]
    passed = len(cases) - len(failed)
    print(f"{name}: {passed}/{len(cases)} test vectors pass")
    assert passed == CLAIMED[name] == len(cases), f"{name}: {passed}/{len(cases)} pass; first failures: {failed[:3]}"


@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe", "llama-spm", "phi-3", "gemma-4", "starcoder"])
def test_vectors_decode_back(name):
    """Byte-level and byte-fallback vocabularies give back the exact text (SPM: minus the prefix space)."""
    tok = vocab_tokenizer(name)
    for text, ids in vector_cases(name):
        assert tok.decode(ids) == text, (name, text)


@pytest.mark.realmodel
def test_vocabs_without_vectors_match_llama_tokenize(tmp_path):
    """t5 Unigram (with a charsmap, and one written by our hf_vocab), a second SentencePiece vocabulary and two
    gpt2 vocabularies on llama.cpp's default pre-tokenizer, against ids llama-tokenize gave (committed)."""
    fixture = json.loads((DATA / "ugm_spm_bpe.json").read_text(encoding="utf-8"))
    texts = read_inputs(vocab_dir() / fixture["inputs"])
    for name, expected in fixture["ids"].items():
        if name == "t5-lora":
            tok = gguf_tokenizer(workbench.open_model(write_t5_vocab(real_model("t5-lora"), tmp_path / "t5.gguf")))
        else:
            tok = vocab_tokenizer(name)
        got = [tok.encode(t, add_special=False, parse_special=False) for t in texts]
        bad = [(t, e, g) for t, e, g in zip(texts, expected, got) if e != g]
        assert not bad, f"{name}: {len(bad)}/{len(texts)} differ, first: {bad[:2]}"


@pytest.mark.realmodel
def test_t5_vocab_from_gguf_matches_its_tokenizer_json(tmp_path):
    """The Unigram built from the GGUF encodes like the t5 tokenizer.json it was converted from (texts without
    tabs or newlines, which llama.cpp keeps as unknown pieces and that tokenizer.json drops)."""
    folder = real_model("t5-lora")
    ours = gguf_tokenizer(workbench.open_model(write_t5_vocab(folder, tmp_path / "t5.gguf")))
    theirs = folder_tokenizer(folder)
    texts = ["translate English to German: The house is wonderful.", "  Hello   world  ", "Äpfel und Birnen",
             "résumé naïve 3.14159 <extra_id_0> </s>", "", "x"]
    for text in texts:
        assert ours.encode(text) == theirs.encode(text), text
    assert ours.encode("Hello")[-1] == ours.eos_id == theirs.eos_id == 1
    assert ours.decode(ours.encode("Hello world")) == "Hello world"


# one vocabulary kind per row: gpt2 BPE, llama SentencePiece, bert WordPiece, t5 Unigram, gemma4 BPE; and the
# vocabularies of issue 14's architectures: qwen3 (qwen2, qwen35), phi3, mistral (llama-spm), gemma3, gemma4
MIXED_KINDS = {"gpt-2": "gpt2", "llama-bpe": "gpt2", "qwen2": "gpt2", "llama-spm": "llama", "bert-bge": "bert",
               "all-minilm": "bert", "nomic-bert-moe": "t5", "t5-lora": "t5", "qwen35": "gpt2", "phi-3": "llama",
               "gemma-4": "gemma4", "gemma3": "llama"}


@pytest.mark.realmodel
@pytest.mark.parametrize("name", sorted(MIXED_KINDS))
def test_mixed_text_matches_llama_cpp(name, tmp_path):
    """Code, digits, accents, CJK, Hangul, emoji, right-to-left scripts and special-token texts, against ids
    llama.cpp gave (committed): ``llama_tokenize`` adding special tokens (what llama-completion and
    llama-embedding do: all-MiniLM's GGUF, whose converter writes add_sep_token false, still ends with [SEP]),
    adding none, and ``llama-tokenize``'s default (adding them when the vocabulary's add_bos says so)."""
    fixture = json.loads((DATA / "mixed.json").read_text(encoding="utf-8"))
    key, arch = MIXED_VOCABS[name]
    if arch is None or name == "gemma3":
        tok = vocab_tokenizer(name)
    else:  # a tokenizer folder written as a GGUF vocabulary the way our converter writes it
        tok = gguf_tokenizer(workbench.open_model(write_vocab(real_model(key), tmp_path / "v.gguf", arch)))
    assert tok.vocab.kind == MIXED_KINDS[name]
    assert set(fixture["vocabs"]) == set(MIXED_KINDS)
    for text, case in zip(fixture["texts"], fixture["vocabs"][name]):
        for label, got in (("special", tok.encode(text)), ("plain", tok.encode(text, add_special=False)),
                           ("tool", tok.encode(text, add_special=tok.vocab.add_bos))):
            want = case[label]
            at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            assert got == want, (f"{name} ({label}) differs from llama.cpp at token {at} of {len(want)}: "
                                 f"llama.cpp {want[at:at + 4]}, ours {got[at:at + 4]}, in {text[:40]!r}")


@pytest.mark.realmodel
def test_gemma3_vocab_special_tokens_and_round_trip():
    """The 262k Gemma 3 SentencePiece vocabulary: Gemma's special ids, <end_of_turn> ends generation, no prefix
    space, and every mixed text decodes back exactly (byte fallback for what the vocabulary lacks)."""
    tok = vocab_tokenizer("gemma3")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (262144, 2, 1, 3, 0)
    assert tok.token_id("<end_of_turn>") == 106 and 106 in tok.eos_ids and 1 in tok.eos_ids
    assert tok.encode("Hello")[0] == 2 and tok.token_text(tok.encode("Hello")[1]) == "Hello"
    assert tok.encode("<start_of_turn>user", parse_special=False)[1] == 105  # user-defined: always matched
    for text in json.loads((DATA / "mixed.json").read_text(encoding="utf-8"))["texts"]:
        assert tok.decode(tok.encode(text, parse_special=False)) == text


@pytest.mark.realmodel
@pytest.mark.parametrize("merges", ["strings", "pairs"])
def test_bpe_tokenizer_json_built_from_parsed_document_equals_from_str(merges, tmp_path):
    """A BPE tokenizer.json folder is built from the parsed document (merges not parsed twice): the result
    serializes exactly as the tokenizers library's own from_str reading of the file (ids of added tokens
    and special flags included), and encodes the mixed texts as llama.cpp does."""
    from tokenizers import Tokenizer

    doc, _notes = gguf_tokenizer_json(workbench.open_model(vocab_dir() / "ggml-vocab-gpt-2.gguf"))
    if merges == "pairs":  # the format tokenizers >= 0.20 saves
        doc["model"]["merges"] = [m.split(" ") for m in doc["model"]["merges"]]
    doc["added_tokens"].append({"id": 50257, "content": "<|new|>", "single_word": False, "lstrip": True,
                                "rstrip": False, "normalized": False, "special": False})  # beyond the vocab
    text = json.dumps(doc, ensure_ascii=False)
    (tmp_path / "tokenizer.json").write_text(text, encoding="utf-8")
    fast = _bpe_from_doc(json.loads(text))
    assert fast is not None
    assert json.loads(fast.to_str()) == json.loads(Tokenizer.from_str(text).to_str())
    tok = folder_tokenizer(tmp_path)
    fixture = json.loads((DATA / "mixed.json").read_text(encoding="utf-8"))
    for t, case in zip(fixture["texts"], fixture["vocabs"]["gpt-2"]):
        assert tok.encode(t, add_special=False) == case["plain"]
    assert tok.encode("a <|new|>b", add_special=False) == [64, 50257, 65]
    assert tok.is_special(50256) and not tok.is_special(50257)


# -- special tokens, ids, pieces -----------------------------------------------------------------------------

@pytest.mark.realmodel
def test_special_tokens_and_eos_sets():
    spm = vocab_tokenizer("llama-spm")
    assert (spm.bos_id, spm.eos_id, spm.unk_id) == (1, 2, 0)
    assert spm.encode("Hello world") == [1, 15043, 3186]  # add_bos from the vocabulary
    assert spm.encode("<s>x", add_special=False) == [1, 921]  # parsed control token, then the prefix space
    assert spm.encode("<s>x", add_special=False, parse_special=False)[0] != 1
    assert spm.is_special(1) and not spm.is_special(15043)
    assert spm.token_piece(15043) == " Hello" and spm.token_piece(13) == "\n"  # <0x0A>
    assert spm.decode([1, 15043, 3186, 2]) == "Hello world"
    assert spm.decode([1, 15043, 2], skip_special=False) == "<s> Hello</s>"
    llama3 = vocab_tokenizer("llama-bpe")
    ids = {t: llama3.token_id(t) for t in ("<|eot_id|>", "<|end_of_text|>")}
    assert set(ids.values()) <= llama3.eos_ids and llama3.bos_id == llama3.token_id("<|begin_of_text|>")
    assert llama3.encode("hi")[0] == llama3.bos_id  # llama-bpe adds BOS (llama.cpp's default for it)
    bert = vocab_tokenizer("bert-bge")
    assert bert.encode("Hello world") == [101, 7592, 2088, 102]  # [CLS] ... [SEP]
    assert bert.decode(bert.encode("Hello, world!")) == "hello, world!"
    assert bert.vocab_size == 30522 and bert.pad_id == 0


@pytest.mark.realmodel
def test_smollm2_gguf_tokenizer_matches_llama_tokenize():
    fixture = json.loads((DATA / "smollm2.json").read_text(encoding="utf-8"))
    tok = load_tokenizer(workbench.open_model(real_model("smollm2")))
    assert tok.source == "gguf" and tok.vocab_size == 49152
    for case in fixture["tokenize"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.encode(case["text"], parse_special=False) == case["ids_no_parse_special"], case["text"]
    assert tok.bos_id == 1 and tok.eos_id == 2 and {0, 2} <= tok.eos_ids  # <|endoftext|>, <|im_end|>


@pytest.mark.realmodel
def test_smollm2_chat_template_renders_like_llama_cpp():
    """llama-completion --jinja rendered these prompts (committed ids and text); so do we."""
    fixture = json.loads((DATA / "smollm2.json").read_text(encoding="utf-8"))
    tok = load_tokenizer(workbench.open_model(real_model("smollm2")))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    for case in fixture["chat"]:
        text = tok.apply_chat_template(case["messages"])
        assert text == case["text"]
        assert tok.encode(text) == case["ids"]
    no_prompt = tok.apply_chat_template(fixture["chat"][0]["messages"], add_generation_prompt=False)
    assert no_prompt == fixture["chat"][0]["text"][:-len("<|im_start|>assistant\n")]


@pytest.mark.realmodel
def test_minilm_tokenizer_json_folder():
    folder = real_model("minilm")
    tok = load_tokenizer(workbench.open_model(folder))
    assert tok.source == "tokenizer.json"
    assert tok.encode("Hello world") == [101, 7592, 2088, 102]
    assert tok.encode("Hello world", add_special=False) == [7592, 2088]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (101, 102, 0, 100)
    assert tok.decode(tok.encode("The capital of France is Paris.")) == "the capital of france is paris."
    assert tok.is_special(101) and not tok.is_special(7592)
    assert tok.token_piece(2088) == " world" and tok.token_piece(tok.token_id("##s")) == "s"
    assert tok.chat_template is None


@pytest.mark.realmodel
def test_peft_adapter_with_tokenizer_json():
    tok = load_tokenizer(workbench.open_model(real_model("t5-lora")))
    ids = tok.encode("translate English to German: Hello")
    assert ids[-1] == tok.eos_id == 1 and tok.pad_id == 0
    assert tok.decode(ids) == "translate English to German: Hello"


def write_vocab_gguf(path: Path, arch: str, model: str | None, tokens: list[str], merges=(), pre=None) -> Path:
    w = gguf.GGUFWriter(path, arch)
    if model is not None:
        w.add_tokenizer_model(model)
        if pre is not None:
            w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types([1] * len(tokens))
        if merges:
            w.add_token_merges(list(merges))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_missing_tokenizers_are_reported(tmp_path):
    bare = workbench.open_model(write_vocab_gguf(tmp_path / "bare.gguf", "llama", None, []))
    with pytest.raises(MissingFileError, match="no tokenizer"):
        load_tokenizer(bare)
    rwkv = workbench.open_model(write_vocab_gguf(tmp_path / "rwkv.gguf", "rwkv6", "rwkv", ["a", "b"]))
    with pytest.raises(UnsupportedError, match="rwkv"):
        load_tokenizer(rwkv)
    with pytest.raises(MissingFileError, match="tokenizer.json"):
        folder_tokenizer(tmp_path)


def test_spm_model_merges_the_best_scored_pair_leftmost_first(tmp_path):
    """llama.cpp's SentencePiece rule, by hand: the adjacent pair whose text is the highest-scored token merges
    first, the leftmost on ties; a piece without a token falls back to <0xXX> byte tokens; the space prefix
    comes back after a control or user-defined token; user-defined tokens are matched even without
    parse_special, control ones only with it."""
    tokens = ["<unk>", "<s>", "</s>", "a", "b", "ab", "ba", "\u2581", "\u2581a", "<u>"]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    path = write_vocab_gguf(tmp_path / "spm.gguf", "llama", "llama", tokens)

    def tok(scores):
        v = read_gguf_vocab(workbench.open_model(path))
        v.scores = np.array(scores + [0] * 256, np.float32)
        v.types = np.array([2, 3, 3, 1, 1, 1, 1, 1, 1, 4] + [6] * 256, np.int32)
        t = gguf_tokenizer(v)
        assert type(t.hf).__name__ == "SpmModel"
        return t

    ids = {t: i for i, t in enumerate(tokens)}
    same = tok([0, 0, 0, 0, 0, -1, -1, 0, -5, 0])
    assert same.encode("aba", add_special=False) == [ids["\u2581"], ids["ab"], ids["a"]]  # tie: leftmost
    ba_first = tok([0, 0, 0, 0, 0, -1, -0.5, 0, -5, 0])  # then "▁a": no "ab" left to take
    assert ba_first.encode("aba", add_special=False) == [ids["\u2581a"], ids["ba"]]
    prefix_first = tok([0, 0, 0, 0, 0, -0.5, -1, 0, -0.1, 0])  # "▁a" beats the better "ab" than "ba"
    assert prefix_first.encode("aba", add_special=False) == [ids["\u2581a"], ids["ba"]]
    assert tok([0, 0, 0, 0, 0, -0.05, -1, 0, -0.1, 0]).encode("aba", add_special=False) == \
        [ids["\u2581"], ids["ab"], ids["a"]]
    assert same.encode("é") == [1, ids["\u2581"], ids["<0xC3>"], ids["<0xA9>"]]  # BOS, then é's two bytes
    assert same.encode("a</s>a<u>a", add_special=False) == [ids["\u2581a"], 2, ids["\u2581a"], ids["<u>"],
                                                            ids["\u2581a"]]  # prefix after every token fragment
    assert same.encode("a</s>", add_special=False, parse_special=False)[-1] != 2
    assert same.encode("a<u>", add_special=False, parse_special=False)[-1] == ids["<u>"]
    assert same.decode([1, ids["\u2581a"], ids["<0xC3>"], ids["<0xA9>"], 2]) == "aé"
    assert same.decode([ids["<0xC3>"], ids["a"]]) == "\ufffda"  # an incomplete character


def test_spm_merges_rank_by_merged_score():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = np.array([0, 0, 0, -2, -1, -3], np.float32)
    assert spm_merges(tokens, scores) == ["b c", "a b", "a bc", "ab c"]


# -- streaming -----------------------------------------------------------------------------------------------

@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["llama-spm", "gpt-2", "qwen2", "bert-bge"])
def test_incremental_decoder_never_splits_characters(name):
    tok = vocab_tokenizer(name)
    text = "Hello 🦙 world: 日本語のテキスト, naïve café ✅ 3.14"
    ids = tok.encode(text)
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)
    if name != "bert-bge":  # WordPiece maps the emoji to [UNK]
        assert "".join(pieces) == text
        multi_token_chars = sum(1 for p in pieces[:-1] if p == "")
        assert multi_token_chars > 0  # some characters really did span several tokens


@pytest.mark.realmodel
def test_incremental_decoder_after_a_prompt_keeps_the_leading_space():
    spm = vocab_tokenizer("llama-spm")
    prompt = spm.encode("The capital of France is")
    out = spm.encode(" Paris. 🦙", add_special=False)[1:]  # the continuation, without the prefix-space token
    assert spm.token_text(out[0]) == "\u2581Paris"
    dec = IncrementalDecoder(spm, context=prompt)
    text = "".join(dec.feed(out)) + dec.flush()
    assert text == " Paris. 🦙"
    assert "".join(IncrementalDecoder(spm).feed(out)) == "Paris. 🦙"  # alone, decode strips the prefix space
    partial = IncrementalDecoder(spm, context=prompt)
    assert [partial.push(i) for i in out[-4:-1]] == ["", "", ""]  # 3 of the emoji's 4 byte tokens
    assert set(partial.flush()) == {"\ufffd"}


# -- chat templates ------------------------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_chat_template_helpers_and_fallback():
    tmpl = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
            "{{ raise_exception('system must come first') }}{% endif %}[{{ m['role'] }}]{{ m['content'] }}"
            "{% endfor %}{{ messages | tojson }}|{{ strftime_now('%Y') | length }}")
    out = apply_chat_template(tmpl, [{"role": "user", "content": "héllo"}])
    assert out == '[user]héllo[{"role": "user", "content": "héllo"}]|4'
    with pytest.raises(TemplateError, match="system must come first"):
        apply_chat_template(tmpl, [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    fallback = apply_chat_template(None, MESSAGES, bos_token="<s>")
    assert fallback == "<s>System: Be brief.\n\nUser: Hi\n\nAssistant:"
    assert apply_chat_template(FALLBACK_TEMPLATE, MESSAGES, add_generation_prompt=False).endswith("User: Hi\n\n")


def test_chat_template_is_sandboxed():
    with pytest.raises(TemplateError, match="sandbox|unsafe|forbid"):
        apply_chat_template("{{ ''.__class__.__mro__[1].__subclasses__() }}", MESSAGES)
    with pytest.raises(TemplateError):  # immutable: templates cannot change the messages
        apply_chat_template("{{ messages.append({'role': 'x'}) }}", MESSAGES)
    with pytest.raises(TemplateError, match="syntax error"):
        apply_chat_template("{% for m in messages %}", MESSAGES)


# -- export: tokenizer.json rebuilt from the GGUF --------------------------------------------------------------

@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["llama-spm", "nomic-bert-moe", "gpt-2", "bert-bge", "gemma-4", "phi-3"])
def test_exported_tokenizer_json_encodes_like_the_gguf(name, tmp_path):
    from tokenizers import Tokenizer

    from workbench.convert.gguf_to_hf import tokenizer_files

    model = workbench.open_model(vocab_dir() / f"ggml-vocab-{name}.gguf")
    files, notes = tokenizer_files(model)
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(files), notes
    for fname, text in files.items():
        (tmp_path / fname).write_text(text, encoding="utf-8")
    exported = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    ours = gguf_tokenizer(model)
    texts = read_inputs(vocab_dir() / "ggml-vocab-llama-spm.gguf.inp") + ["<s>[CLS]</s> x <|endoftext|>"]
    for text in texts:
        assert exported.encode(text).ids == ours.encode(text), text
        assert exported.encode(text, add_special_tokens=False).ids == ours.encode(text, add_special=False), text
    cfg = json.loads(files["tokenizer_config.json"])
    if name == "llama-spm":
        assert (cfg["bos_token"], cfg["eos_token"], cfg["unk_token"], cfg["add_bos_token"]) == ("<s>", "</s>",
                                                                                               "<unk>", True)
        assert cfg["added_tokens_decoder"]["1"]["special"] is True
    if name == "nomic-bert-moe":
        assert json.loads(files["tokenizer.json"])["model"]["type"] == "Unigram"
        assert cfg["add_eos_token"] is True
    # and the folder loads as a tokenizer.json folder again, with the same special ids
    again = folder_tokenizer(tmp_path)
    assert (again.bos_id, again.eos_id) == (ours.bos_id, ours.eos_id)


@pytest.mark.realmodel
def test_export_then_convert_round_trip_keeps_the_tokenizer_keys(tmp_path, caplog):
    """GGUF -> HF folder -> GGUF: the exported tokenizer_config.json says add_bos_token and the converter's own
    rule for 49152-token vocabularies sets it again; the key is written once, without gguf-py's warning, and
    every tokenizer key of the original comes back with the same bytes."""
    import logging

    from workbench.convert import convert_hf_to_gguf
    from workbench.convert.export import export_hf
    from workbench.convert.requantize import raw_metadata
    from workbench.progress import run

    src = real_model("smollm2")
    run(export_hf(src, tmp_path / "hf", dtype="BF16"))
    with caplog.at_level(logging.WARNING):
        back = run(convert_hf_to_gguf(tmp_path / "hf", tmp_path / "back.gguf", "F16"))[0]
    assert not [r.getMessage() for r in caplog.records if "Duplicated key" in r.getMessage()]
    n_kv = int(np.frombuffer(back.read_bytes()[16:24], "<u8")[0])  # the header's key count
    got = raw_metadata(back)
    assert n_kv == len(got)  # every key once
    original = {k: v for k, v in raw_metadata(src).items() if k.startswith("tokenizer.")}
    got = {k: v for k, v in got.items() if k.startswith("tokenizer.")}
    assert original["tokenizer.ggml.add_bos_token"] == bytes([gguf.GGUFValueType.BOOL, 0, 0, 0, 0])  # False
    extra = {k: got.pop(k) for k in set(got) - set(original)}
    assert got == original
    assert extra == {"tokenizer.ggml.add_eos_token": bytes([gguf.GGUFValueType.BOOL, 0, 0, 0, 0])}  # llama.cpp's
    # default for a gpt2 vocabulary, which the exported tokenizer.json's ByteLevel post-processor states


def test_gguf_tokenizer_json_notes_unknown_pre_tokenizer(tmp_path):
    model = workbench.open_model(write_vocab_gguf(tmp_path / "v.gguf", "llama", "gpt2", ["a", "b", "ab", "Ġ"],
                                                  merges=["a b"], pre="something-new"))
    _doc, notes = gguf_tokenizer_json(model)
    assert any("something-new" in n for n in notes)
    assert gguf_tokenizer(model).encode("ab a") == [2, 3, 0]
