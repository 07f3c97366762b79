"""What ``compress`` did, as the command line and the main job print it."""

from __future__ import annotations

from ..measure.continuations import NEW_TOKENS
from .plan import describe


def summary_table(result: dict) -> str:
    """Parameters and embedding bytes, the plan's candidates, then one row per measured text (served or not) with
    the ratio to dense, and the quantization peers beside it; the continuations' agreement last."""
    report, stored = result["report"], result["embedding_bytes"]
    peers = result.get("peers") or {}
    b, a = report["model_params_before"], report["model_params_after"]
    lines = [
        f"method {report['method']}: model parameters {b:,} -> {a:,} ({a / b:.1%})",
        f"embedding bytes: fp32 {stored['dense_fp32']:,}; factorized {stored['stored']:,} ({stored['share']:.1%})"
        + "".join(
            f"; {n} {p['embedding_bytes']:,} ({p['embedding_bytes'] / stored['dense_fp32']:.1%})"
            for n, p in peers.items()
        ),
    ]
    if result.get("plan"):
        lines.extend(describe(result["plan"]))
    if result.get("fed_as"):
        lines.append(f"perplexity of {result['fed_as']}")
    header = f"{'text':<16}{'served':<12}{'dense':>10}{'factorized':>12}{'ratio':>11}"
    lines.append(header + "".join(f"{name.split(' (')[0]:>12}" for name in peers))
    for name, e in result["evaluation"].items():
        served = "held back" if e.get("served") else ("no" if "served" in e else "")
        row = f"{name:<16}{served:<12}{_figure(e['dense']):>10}{_figure(e['factorized']):>12}"
        row += f"{_ratio(e.get('ratio')):>11}"
        row += "".join(f"{_ratio(p['ratio'][name]):>12}" for p in peers.values() if name in p["ratio"])
        lines.append(row)
    lines.extend(_fidelity_rows(result["evaluation"], peers))
    rows = result.get("continuations") or []
    if rows:
        same = sum(r["identical"] for r in rows)
        bad = [_degenerate(r) for r in rows if r["degenerate"]]
        lines.append(
            f"greedy continuations ({NEW_TOKENS} tokens) of each text's first words: {same} of {len(rows)} identical "
            f"to dense's; degenerate: {', '.join(bad) if bad else 'none'}"
        )
    return "\n".join(lines)


def _degenerate(row: dict) -> str:
    """A degenerate continuation's group, and whether dense, fed the same text, loops there too."""
    return row["group"] + (" (dense loops there too)" if row.get("dense_loops_too") else "")


def _fidelity_rows(evaluation: dict, peers: dict) -> list[str]:
    """KL divergence from dense and same-top share per text, ours then each peer's (where they were measured)."""
    names = [name for name, e in evaluation.items() if "kld" in e]
    if not names:
        return []
    lines = [
        "KL divergence from dense / same top token (teacher-forced, the same windows)",
        f"{'text':<28}{'factorized':>18}" + "".join(f"{name.split(' (')[0]:>18}" for name in peers),
    ]
    for name in names:
        e = evaluation[name]
        row = f"{name:<28}{_kld(e['kld'], e['same_top']):>18}"
        row += "".join(
            f"{_kld(p['kld'][name], p['same_top'][name]):>18}" for p in peers.values() if name in p.get("kld", {})
        )
        lines.append(row)
    return lines


def _kld(kld: float, same_top: float) -> str:
    return f"{kld:.4f} / {same_top:.1%}"


def _figure(value: float) -> str:
    return f"{value:.3f}" if value < 1e5 else f"{value:.3g}"


def _ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}x" if value < 1e3 else f"{value:.2g}x"
