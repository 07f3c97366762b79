"""Makes factorized checkpoints load in Python processes that never ``import hf_factor_embed``.

``hf_factor_embed-autoload.pth`` (installed beside the package in site-packages) imports this module at every
interpreter start, so it must cost next to nothing: it only puts a finder on ``sys.meta_path``. The finder
waits for ``transformers.modeling_utils`` (imported before any model loads: ``from_pretrained``, pipelines, the
``transformers`` command line, Trainer scripts) and, once that module has run, imports ``hf_factor_embed``,
which registers its quantizer with transformers. Processes that never load a model never import either.
"""

import sys  # nothing else: this runs at every interpreter start (importlib.abc alone would cost ~1 ms)

TRIGGER = "transformers.modeling_utils"


class _RegisterAfterLoad:
    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:
            import hf_factor_embed  # noqa: F401  (registers the integration)
        except Exception as error:  # never break transformers because of the plugin: say why and go on
            print(f"hf_factor_embed autoload: not registered ({type(error).__name__}: {error})", file=sys.stderr)


class _Finder:
    """One-shot: wraps the loader of :data:`TRIGGER`, then leaves ``sys.meta_path``."""

    def find_spec(self, name, path=None, target=None):
        if name != TRIGGER:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterLoad(spec.loader)
                return spec
        return None


def install() -> None:
    if TRIGGER not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
