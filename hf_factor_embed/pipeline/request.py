"""A ``compress`` run's request, checked whole before any model loads: the settings, what the size is (a rank the
user gives, or the plan's budget or target), the sources' texts read, and the output folder writable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..arguments import check_writable_folder
from ..calibration.generated import GENERATED, GeneratedSource, generated_text, is_generated, parse_generated
from ..calibration.sources import TextSource, load_sources, unserved_defaults
from ..errors import FactorEmbedError
from ..folders import check_not_input, check_output_dir
from ..models.names import check_gguf_file, check_model_name, embedding_shape
from ..options import DEFAULT_MAX_BYTES, Settings
from .budget import check_budget_fits
from .plan import check_plan_arguments


@dataclass
class CompressRequest:
    """What ``compress`` was asked, resolved: ``plan`` is the plan's ``("share" | "bytes" | "target", number)`` or
    None for a size the user gives; ``bits`` the storage bits used (4 under the plan unless given)."""

    model_name: str | Path
    out: Path
    settings: Settings
    method: object  # a method name, a configured method (the banded method's settings), or None
    plan: tuple[str, float] | None
    bits: int | None
    calibration: str | torch.Tensor | Mapping | None
    eval_texts: dict
    served: dict[str, str]  # served source -> where its text comes from
    origins: dict[str, str]  # every measured text -> where it comes from
    gguf_file: str | None
    dtype: str

    @property
    def size(self) -> dict:
        """The size as the report records it."""
        if self.plan is not None:
            if self.plan[0] in ("target", "target_kld"):
                return {self.plan[0]: self.plan[1]}
            return {"max_bytes": self.settings.size.max_bytes}
        s = self.settings.size
        name = next(n for n in ("rank", "budget", "target") if getattr(s, n) is not None)
        return {name: getattr(s, name)}


def prepare(
    model_name, out, settings: Settings, *, calibration, eval_texts, method, gguf_file, dtype, overwrite
) -> CompressRequest:
    """Every check that needs no model, and the served sources read (a missing file or language fails in a
    second); what the plan cannot go with is refused here too."""
    size, tail = settings.size, settings.tail
    if size == type(size)() and settings.sources.serve is not None and method in (None, "banded"):
        settings = replace(settings, size=type(size)(max_bytes=DEFAULT_MAX_BYTES))
        size = settings.size
    plan = check_plan_arguments(
        size.max_bytes, settings.sources.serve, method, *_tail_given(tail), size.target, size.target_kld
    )
    bits = settings.storage.bits if plan is None or settings.storage.bits is not None else 4
    method = _check_size_and_method(model_name, out, method, settings, plan, dtype, overwrite, gguf_file)
    served, origins, eval_texts = {}, {}, dict(eval_texts or {})
    if settings.sources.serve is not None:
        if calibration is not None:
            raise FactorEmbedError("give the served sources (serve=...) or calibration text, not both")
        calibration, served_evals, served, origins = _served_texts(settings)
        clash = sorted(set(served_evals) & set(eval_texts))
        if clash:
            raise FactorEmbedError(f"an evaluation text and a source share the name {clash[0]!r}; rename the file")
        eval_texts = {**served_evals, **eval_texts}
    _check_rank_fits(model_name, size.rank, gguf_file, method)
    _check_peers(settings.sources.peers)
    if plan is not None:
        storage = settings.storage
        check_budget_fits(plan, embedding_shape(model_name, gguf_file), bits, storage.group_size, storage.band_bits)
    return CompressRequest(
        model_name, Path(out), settings, method, plan, bits, calibration, eval_texts, served, origins, gguf_file, dtype
    )


def _tail_given(tail) -> tuple:
    """The banded method's settings as given (None where left at the default), in the plan's argument order."""
    given = tail.given
    return tuple(given.get(k) for k in ("band_share", "tail", "tail_sub_dim"))


def _check_size_and_method(model_name, out, method, settings: Settings, plan, dtype, overwrite, gguf_file=None):
    """Exactly one size; the dtype, the method and the banded method's settings; the model name and the output
    folder. Returns the method to use (a configured ``BandedMethod`` for the banded method's settings)."""
    from ..factorize import get_method
    from ..models.load import DTYPES

    size = settings.size
    given = [x for x in (size.rank, size.budget, size.target, size.target_kld) if x is not None]
    if plan is None:
        one = len(given) == 1
    else:  # the plan's target is --target (or --target-kld) itself; a budget goes alone
        one = size.rank is None and size.budget is None and (plan[0] in ("target", "target_kld") or not given)
    if not one:
        raise FactorEmbedError(
            "give exactly one of --rank, --budget, --target, --target-kld or --max-bytes (the plan, for served "
            "--calibration sources)"
        )
    if dtype not in DTYPES:
        raise FactorEmbedError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if method is not None:
        get_method(method)  # an unknown name is one line, before the model loads
    banded = settings.tail.given
    if banded and plan is None:
        from ..factorize.banded import BandedMethod

        if method not in (None, "banded"):
            raise FactorEmbedError(f"{', '.join(banded)}: settings of the banded method, not of {method!r}")
        method = BandedMethod(**banded)
    check_model_name(model_name)
    check_gguf_file(model_name, gguf_file)
    check_output_dir(out, overwrite=overwrite)
    check_not_input(out, [model_name])
    check_writable_folder(out)
    return method


def _check_rank_fits(model_name, rank: int | None, gguf_file: str | None, method=None) -> None:
    """A rank whose factors would be no smaller than the embedding is refused from the config alone (a second),
    not after the model loads."""
    shape = embedding_shape(model_name, gguf_file) if rank is not None else None
    if shape is None:
        return
    from ..factorize.ranks import check_rank

    v, d, _ = shape
    check_rank(rank, v, d)
    if getattr(method, "tail", None) == "pq":
        from ..factorize.product import check_sub_dim

        check_sub_dim(method.tail_sub_dim, d)


def _check_peers(peers) -> None:
    """Peer names are known before the model loads (``peers=True``: all of them)."""
    if isinstance(peers, bool):
        return
    from ..measure.peers import quantization_peers

    known = [p.name for p in quantization_peers()]
    unknown = sorted(set(peers) - set(known))
    if unknown:
        raise FactorEmbedError(f"unknown peers {unknown}; known: {known}")


def _generated(specs) -> list[GeneratedSource]:
    """The ``generated`` source among ``specs`` (checked now: a bad size fails before the model loads)."""
    found = [parse_generated(s) for s in specs if is_generated(s)]
    if len(found) > 1:
        raise FactorEmbedError("'generated' is named twice; give it once (generated or generated:<tokens>)")
    return found


def sample_generated(request: CompressRequest, model, tokenizer) -> None:
    """Replace a :class:`GeneratedSource` among ``request``'s texts by the text the loaded ``model`` samples: split
    into a calibration and a held-back part where it is served, whole where it is only measured."""
    sources = request.settings.sources
    pending = request.eval_texts.get(GENERATED)
    if not isinstance(pending, GeneratedSource):
        return
    served = isinstance(request.calibration, Mapping) and GENERATED in request.calibration
    held_back = sources.held_back if served else None
    tokens = pending.tokens_needed(sources.calibration_tokens, sources.eval_tokens, held_back)
    text = TextSource(GENERATED, generated_text(model, tokenizer, pending, tokens), pending.origin)
    if served:
        request.calibration[GENERATED], request.eval_texts[GENERATED] = text.split(held_back)
    else:
        request.eval_texts[GENERATED] = text.text


def _served_texts(settings: Settings):
    """(calibration part per served source, texts to measure, served source -> origin, every text's origin)."""
    serve, measure, held_back = settings.sources.serve, settings.sources.measure, settings.sources.held_back
    if not serve:
        raise FactorEmbedError("serve=[] names nothing to serve; name at least one source (a file, pydoc, lang:de)")
    served_generated, serve = _generated(serve), [s for s in serve if not is_generated(s)]
    sources = [*load_sources(serve), *served_generated]
    others = unserved_defaults(s.name for s in sources) if measure is None else list(measure)
    measured_generated = [g for g in _generated(others) if not served_generated]
    others = [s for s in others if not is_generated(s)]
    measured = [*[m for m in load_sources(others) if m.name not in {s.name for s in sources}], *measured_generated]
    calibration, evals = {}, {}
    for source in sources:  # the model's own text is sampled once it loads (GeneratedSource stands for it)
        generated = isinstance(source, GeneratedSource)
        calibration[source.name], evals[source.name] = (source, source) if generated else source.split(held_back)
    evals.update({m.name: m if isinstance(m, GeneratedSource) else m.text for m in measured})
    origins = {s.name: s.origin for s in (*sources, *measured)}
    return calibration, evals, {s.name: s.origin for s in sources}, origins
