"""What a user serves: the gettext .mo reader, named text sources and their held-back parts, calibration by named
sources (each covered, ``target`` decided by the worst), the served / not-served report and card, and the peers."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, tiny_llama, tiny_tokenizer, tiny_words

import hf_factor_embed as hfe
from hf_factor_embed import FactorEmbedError
from hf_factor_embed.calibration.collect import collect_stats
from hf_factor_embed.calibration.gettext_catalogs import CatalogError, catalog_text, read_mo
from hf_factor_embed.calibration.sources import TextSource, load_source, load_sources, unserved_defaults
from hf_factor_embed.calibration.stats import CalibrationStats
from hf_factor_embed.measure.perplexity import perplexity


def write_mo(path: Path, messages: dict[str, str], charset: str, big_endian: bool = False) -> Path:
    """A .mo file as msgfmt writes it: header entry first, originals sorted, each string NUL-terminated."""
    order = ">" if big_endian else "<"
    header = f"Content-Type: text/plain; charset={charset}\n".encode("ascii")
    entries = sorted([(b"", header), *((o.encode(charset), t.encode(charset)) for o, t in messages.items())])
    n = len(entries)
    originals_at, translations_at = 28, 28 + 8 * n
    blob, offset = b"", 28 + 16 * n
    tables: list[list[tuple[int, int]]] = [[], []]
    for side in (0, 1):
        for entry in entries:
            tables[side].append((len(entry[side]), offset + len(blob)))
            blob += entry[side] + b"\0"
    head = struct.pack(order + "7I", 0x950412DE, 0, n, originals_at, translations_at, 0, 0)
    body = b"".join(struct.pack(order + "2I", *pair) for side in tables for pair in side)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + body + blob)
    return path


CATALOGS = {
    "de": ({"File not found": "Datei nicht gefunden", "Save changes?": "Änderungen speichern?"}, "utf-8"),
    "fr": ({"Open": "Ouvrir", "Welcome": "Bienvenue à bord"}, "iso-8859-1"),
    "ja": ({"Cancel": "キャンセル", "Quit": "終了"}, "euc-jp"),
}


@pytest.fixture
def locale_dir(tmp_path) -> Path:
    for lang, (messages, charset) in CATALOGS.items():
        write_mo(tmp_path / lang / "LC_MESSAGES" / "app.mo", messages, charset, big_endian=lang == "fr")
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "iso_639.mo", {"German": "Deutsch"}, "utf-8")  # a code list: skipped
    return tmp_path


@pytest.mark.parametrize("lang", sorted(CATALOGS))
def test_each_catalog_is_decoded_by_its_own_charset(locale_dir, lang):
    messages, charset = CATALOGS[lang]
    catalog = read_mo(locale_dir / lang / "LC_MESSAGES" / "app.mo")
    assert catalog.charset == charset and dict(catalog.messages) == messages
    assert catalog_text(lang, locale_dir=locale_dir).splitlines() == [messages[o] for o in sorted(messages)]


def test_code_lists_are_skipped_and_a_damaged_catalog_costs_only_itself(locale_dir, caplog):
    assert "Deutsch" not in catalog_text("de", locale_dir=locale_dir)
    broken = locale_dir / "de" / "LC_MESSAGES" / "broken.mo"
    broken.write_bytes((locale_dir / "de" / "LC_MESSAGES" / "app.mo").read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="hf_factor_embed.calibration.gettext_catalogs"):
        text = catalog_text("de", locale_dir=locale_dir)
    assert "Datei nicht gefunden" in text and "skipped" in caplog.text and "broken.mo" in caplog.text
    not_a_catalog = locale_dir / "not.mo"
    not_a_catalog.write_bytes(b"\0" * 64)
    with pytest.raises(CatalogError, match="magic"):
        read_mo(not_a_catalog)
    with pytest.raises(FileNotFoundError, match="no gettext catalogs"):
        catalog_text("xx", locale_dir=locale_dir)


@pytest.mark.skipif(not Path("/usr/share/locale/de/LC_MESSAGES").is_dir(), reason="no gettext catalogs here")
def test_the_machines_catalogs_give_real_text_per_language():
    german, english = load_source("lang:de"), load_source("messages")
    assert len(german.text) > 100_000 and "ü" in german.text and "the" in english.text.split()
    assert load_source("lang:ja").text.count("\n") > 1000


def test_a_source_splits_at_a_line_end_without_overlap():
    text = "\n".join(f"line {i}" for i in range(100))
    calibration, held_back = TextSource("t", text, "test").split(0.2)
    assert held_back + calibration == text and held_back.endswith("\n")
    assert not set(held_back.splitlines()) & set(calibration.splitlines())
    with pytest.raises(FactorEmbedError, match="between 0 and 1"):
        TextSource("t", text, "test").split(1.5)


def test_sources_by_file_name_and_language_and_their_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("some served text\n" * 10)
    (source,) = load_sources([tmp_path / "notes.txt"])
    assert source.name == "notes" and source.origin == str(tmp_path / "notes.txt")
    with pytest.raises(FactorEmbedError, match="neither a file nor a known source"):
        load_source("no-such-source")
    with pytest.raises(FactorEmbedError, match="no gettext catalogs for language 'xx'"):
        load_source("lang:xx")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(FactorEmbedError, match="empty"):
        load_source(tmp_path / "empty.txt")
    assert "pydoc" not in unserved_defaults(["pydoc"]) and "lang:de" in unserved_defaults(["pydoc"])


def two_sources(small: int = 400, large: int = 8000) -> dict[str, torch.Tensor]:
    """A small source over token ids 1..99 and a large one over 100..319: disjoint vocabularies."""
    g = torch.Generator().manual_seed(0)
    return {
        "small": torch.randint(1, 100, (small,), generator=g),
        "large": torch.randint(100, VOCAB, (large,), generator=g),
    }


def test_equal_weights_keep_a_small_source_in_the_band():
    model, sources = tiny_llama(), two_sources()
    parts = [collect_stats(model, ids, statistics={"token_counts"}, progress=False) for ids in sources.values()]
    pooled, equal = CalibrationStats.combine(*parts), CalibrationStats.combine(*parts, equal=True)
    top = 60
    assert (pooled.token_counts.argsort(descending=True)[:top] < 100).sum() < top // 4  # crowded out when pooled
    assert (equal.token_counts.argsort(descending=True)[:top] < 100).sum() >= top // 3
    assert equal.token_counts.sum() == pytest.approx(pooled.token_counts.sum())


def test_named_sources_each_get_band_rows_and_are_reported():
    from hf_factor_embed.factorize.banded import BandedMethod

    method = BandedMethod(band_share=0.9)  # 129 exact rows
    model = hfe.patch_model(tiny_llama(), rank=24, method=method, calibration=two_sources())
    pooled = hfe.patch_model(tiny_llama(), rank=24, method=method, calibration=torch.cat(list(two_sources().values())))
    band, pooled_band = model.model.embed_tokens.dense_index, pooled.model.embed_tokens.dense_index
    assert (band < 100).sum() > (pooled_band < 100).sum() and (band >= 100).any()
    assert model.factor_embed_report.sources == {"small": 400, "large": 8000}
    assert "calibrated on: small (400 tokens), large (8,000 tokens)" in str(model.factor_embed_report)


def test_target_holds_on_every_source_and_the_worst_decides():
    sources = {"small": two_sources(small=3000)["small"], "large": two_sources()["large"]}
    model = hfe.patch_model(tiny_llama(), target=1.05, calibration=sources, holdout_tokens=1000, method="svd")
    note = model.factor_embed_report.note
    assert "small" in note and "large" in note and "worst" in note
    rank = model.model.embed_tokens.rank
    dense = tiny_llama()
    for ids in sources.values():
        held = ids[-1000:]
        assert perplexity(model, held, window=500) <= 1.05 * perplexity(dense, held, window=500) * (1 + 1e-6)
    if rank > 8:  # one step smaller fails on at least one source
        smaller = hfe.patch_model(tiny_llama(), rank=rank - 8, calibration=sources, method="svd")
        ratios = [
            perplexity(smaller, ids[-1000:], window=500) / perplexity(dense, ids[-1000:], window=500)
            for ids in sources.values()
        ]
        assert max(ratios) > 1.05
    with pytest.raises(FactorEmbedError, match="'small' has 400 tokens"):
        hfe.patch_model(tiny_llama(), target=1.05, calibration=two_sources(), holdout_tokens=1000)


def test_trimmed_perplexity_reads_and_predicts_only_the_kept_tokens():
    model, ids = tiny_llama(), two_sources()["large"][:1024]
    everything = torch.ones(VOCAB, dtype=torch.bool)
    assert perplexity(model, ids, window=512, keep=everything, unk_id=0) == pytest.approx(perplexity(model, ids))
    keep = torch.zeros(VOCAB, dtype=torch.bool)
    keep[:200] = True
    trimmed = perplexity(model, ids, window=512, keep=keep, unk_id=0)
    assert torch.isfinite(torch.tensor(trimmed)) and trimmed != pytest.approx(perplexity(model, ids))
    with pytest.raises(ValueError, match="unk_id"):
        perplexity(model, ids, window=512, keep=keep)


@pytest.fixture
def served_run(tmp_path):
    root = tmp_path
    tiny_llama().save_pretrained(root / "dense")
    tiny_tokenizer().save_pretrained(root / "dense")
    words = tiny_words(6000, seed=3).split()
    (root / "low.txt").write_text("\n".join(" ".join(w for w in words[i : i + 20]) for i in range(0, 3000, 20)))
    (root / "high.txt").write_text("\n".join(" ".join(words[i : i + 20]) for i in range(3000, 6000, 20)))
    (root / "other.txt").write_text(tiny_words(2000, seed=9))
    return root


def test_compress_lists_served_and_not_served_in_json_and_card(served_run, capsys):
    from hf_factor_embed.cli import main

    root = served_run
    argv = ["compress", root / "dense", "--rank", "4", "--calibration", root / "low.txt", "--calibration"]
    argv += [root / "high.txt", "--measure", root / "other.txt", "--peers", "--out", root / "out"]
    assert main([str(a) for a in argv]) == 0
    info = json.loads((root / "out" / "compression.json").read_text())
    assert set(info["served"]) == {"low", "high"}
    assert {n: e["served"] for n, e in info["evaluation"].items()} == {"low": True, "high": True, "other": False}
    assert info["report"]["calibration_sources"].keys() == {"low", "high"}
    assert set(info["peers"]) >= {"int8", "int4 g32"} and set(info["peers"]["int8"]["ratio"]) == set(info["evaluation"])
    # KL divergence and same-top for ours and every peer on every text; int8 of the embedding stays closer than int4
    for name, e in info["evaluation"].items():
        assert e["kld"] >= 0 and 0 <= e["same_top"] <= 1 and e["kld_p99"] >= e["kld"]
        assert info["peers"]["int8"]["kld"][name] < info["peers"]["int4 g32"]["kld"][name]
        assert set(info["peers"]["int4 g32"]["same_top"]) == set(info["evaluation"])
    assert info["embedding_bytes"]["stored"] < info["embedding_bytes"]["dense_fp32"]
    card = (root / "out" / "README.md").read_text()
    assert "| low | yes (held back) |" in card and "| other | **no** |" in card and "int4 g32" in card
    out = capsys.readouterr().out
    assert "held back" in out and "other" in out and "KL divergence from dense / same top token" in out


def test_a_source_far_outside_is_a_warning_in_the_report_and_card(served_run, monkeypatch):
    import hf_factor_embed.pipeline.compress as compress_module
    import hf_factor_embed.pipeline.result as result_module

    monkeypatch.setattr(result_module, "FAR_OUTSIDE", 0.0)  # a tiny random model is never 2x worse
    root = served_run
    info = compress_module.compress(
        root / "dense", root / "out", rank=2, serve=[root / "low.txt"], measure=[root / "other.txt"], plots=False
    )
    assert info["warnings"] and info["warnings"][0].startswith("other (not served)")
    assert "> **Warning:** other (not served)" in (root / "out" / "README.md").read_text()


def test_the_generated_source_is_the_models_own_text_reproducible_by_its_seed():
    from hf_factor_embed.calibration.generated import GeneratedSource, english_starts, generated_text

    model, tokenizer = tiny_llama(), tiny_tokenizer()
    first = generated_text(model, tokenizer, GeneratedSource(seed=0), 400, progress=False)
    assert first == generated_text(model, tokenizer, GeneratedSource(seed=0), 400, progress=False)
    assert first != generated_text(model, tokenizer, GeneratedSource(seed=1), 400, progress=False)
    assert len(tokenizer(first, add_special_tokens=False).input_ids) >= 300 and first.count("\n") >= 2
    starts = english_starts(tokenizer, 8, torch.Generator().manual_seed(0))
    assert all(s[0] == tokenizer.bos_token_id for s in starts if tokenizer.bos_token_id is not None)


@pytest.mark.parametrize("spec", ["generated:0", "generated:abc", "generated:-5", "generated:1.5", "generated:10"])
def test_a_bad_generated_size_is_one_line_naming_the_form(spec):
    from hf_factor_embed.calibration.generated import parse_generated

    with pytest.raises(FactorEmbedError, match="generated:8192"):
        parse_generated(spec)


def test_compress_serves_generated_text_held_back_and_measured(served_run):
    from hf_factor_embed.pipeline.compress import compress

    root = served_run
    info = compress(
        root / "dense", root / "out", rank=4, serve=["generated", root / "low.txt"], measure=[root / "other.txt"],
        plots=False, eval_tokens=128, calibration_tokens=512,
    )  # fmt: skip
    assert info["served"]["generated"].startswith("the model's own text")
    assert info["evaluation"]["generated"]["served"] and info["evaluation"]["generated"]["kld"] >= 0
    assert "generated" in info["report"]["calibration_sources"]
