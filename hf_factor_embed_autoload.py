"""Makes factorized checkpoints load in Python processes that never ``import hf_factor_embed``.

``hf_factor_embed-autoload.pth`` (installed beside the package in site-packages) imports this module at every
interpreter start, so it must cost next to nothing: it only puts a finder on ``sys.meta_path``. The finder
waits for ``transformers.modeling_utils`` (imported before any model loads: ``from_pretrained``, pipelines, the
``transformers`` command line, Trainer scripts) and, once that module has run, imports ``hf_factor_embed``,
which registers its quantizer with transformers. Processes that never load a model never import either.
:func:`run_after_import` is the same one-shot hook for the package's own use.
"""

import sys  # nothing else: this runs at every interpreter start (importlib.abc alone would cost ~1 ms)

TRIGGER = "transformers.modeling_utils"


def _register() -> None:
    try:
        import hf_factor_embed  # noqa: F401  (registers the integration)
    except Exception as error:  # never break transformers because of the plugin: say why and go on
        print(f"hf_factor_embed autoload: not registered ({type(error).__name__}: {error})", file=sys.stderr)


class _RunAfterLoad:
    def __init__(self, loader, callback) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._callback()


class _Finder:
    """One-shot: wraps the loader of ``trigger`` so that ``callback`` runs once it has executed, then leaves
    ``sys.meta_path``."""

    def __init__(self, trigger: str = TRIGGER, callback=_register) -> None:
        self.trigger, self.callback = trigger, callback

    def find_spec(self, name, path=None, target=None):
        if name != self.trigger:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RunAfterLoad(spec.loader, self.callback)
                return spec
        return None


def run_after_import(name: str, callback) -> None:
    """``callback()`` now if module ``name`` is imported, else right after it first is (once)."""
    if name in sys.modules:
        callback()
    elif not any(isinstance(f, _Finder) and f.trigger == name and f.callback is callback for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder(name, callback))


def install() -> None:
    if TRIGGER not in sys.modules and not any(
        isinstance(f, _Finder) and f.callback is _register for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _Finder())
