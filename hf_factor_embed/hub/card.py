"""The model card of a compressed checkpoint, rendered through ``huggingface_hub``'s ``ModelCard`` from the
package's template (``card_template.md``) and the folder's ``compression.json``."""

from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(__file__).with_name("card_template.md")
CARD_FILE = "README.md"

#: transformers' Auto class per architecture suffix, for the card's loading snippet.
_AUTO_CLASSES = {
    "ForCausalLM": "AutoModelForCausalLM",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
}


def render_card(info: dict, repo_id: str | None = None):
    """A ``ModelCard`` for a folder described by ``info`` (what :func:`hf_factor_embed.pipeline.compress.compress`
    returns). ``base_model_relation`` is ``quantized``: the Hub's relation for a compressed copy of the same
    weights (its other values are adapter, merge and finetune)."""
    from huggingface_hub import ModelCard, ModelCardData

    report = info["report"]
    base = info["base_model"]
    hub_base = info.get("base_model_id") or (base if _looks_like_hub_name(base) else None)
    data = ModelCardData(
        base_model=hub_base,
        base_model_relation="quantized" if hub_base else None,
        library_name="transformers",
        tags=["hf-factor-embed", "factorized-embedding", "low-rank", "compression"],
        license=info.get("license"),
        pipeline_tag="text-generation" if info["architecture"].endswith("ForCausalLM") else None,
    )
    modules = report["modules"]
    auto_class = next((a for s, a in _AUTO_CLASSES.items() if info["architecture"].endswith(s)), "AutoModel")
    rank = (info.get("requested") or {}).get("rank") or max((m["rank"] for m in modules), default=0)
    size = f"{info['plan']['chosen']}-{100 * info['plan']['budget_share']:g}pct" if info.get("plan") else f"r{rank}"
    name = repo_id or f"{Path(str(hub_base or base)).name}-factorized-{size}"
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=name,
        repo_id=repo_id or "PATH_OR_REPO_ID",
        base_model=hub_base or base,
        base_model_url=f"https://huggingface.co/{hub_base}" if hub_base else "#",
        tied=any(m.get("shares_with") for m in modules),
        dense_rows=max((m["dense_rows"] for m in modules), default=0),
        modules=modules,
        method=report["method"],
        calibration_tokens=info.get("calibration_tokens", 0),
        params_before=report["model_params_before"],
        params_after=report["model_params_after"],
        dtype=info.get("dtype", "float32"),
        bytes_dense=info["param_bytes_dense"],
        bytes_factorized=info["param_bytes_factorized"],
        checkpoint_bytes=info.get("checkpoint_bytes", 0),
        evaluation=info.get("evaluation"),
        fed_as=info.get("fed_as"),
        tail=info.get("tail"),
        tail_sub_dim=info.get("tail_sub_dim"),
        special_tokens=[f"`{t}`" for t in info.get("special_tokens_exact") or []],
        peers=info.get("peers") or {},
        served=info.get("served") or {},
        warnings=info.get("warnings") or [],
        plan=info.get("plan"),
        continuations=[
            {**c, **{k: _cell(c[k]) for k in ("prompt", "dense", "ours")}} for c in info.get("continuations") or []
        ],
        embedding_bytes=info.get("embedding_bytes") or {},
        bits=info.get("bits"),
        group_size=info.get("group_size"),
        band_bits=info.get("band_bits") or info.get("bits"),
        plots=info.get("plots", []),
        auto_class=auto_class,
        command=info.get("command") or "(made from Python: hf_factor_embed.patch_model)",
    )


def write_card(folder: str | Path, info: dict, repo_id: str | None = None) -> Path:
    path = Path(folder) / CARD_FILE
    render_card(info, repo_id).save(path)
    return path


def _cell(text: str) -> str:
    """Text inside a Markdown table cell: newlines shown, pipes escaped."""
    return "`" + text.replace("\n", "⏎").replace("|", "\\|").replace("`", "'") + "`"


def _looks_like_hub_name(name: str) -> bool:
    """'org/model' that is not a local path: the only kind of base the Hub's metadata can link to."""
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not str(name).startswith((".", "~"))
