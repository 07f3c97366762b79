"""The ``hf-factor-embed`` command line (typer). Each subcommand lives in its own module, parses its arguments
and calls the public API; a user's mistake ends as one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

from ..errors import FactorEmbedError

app = typer.Typer(
    name="hf-factor-embed",
    help="Factorize the token embeddings and output heads of Hugging Face models, and recover their quality.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Factorize the token embeddings and output heads of Hugging Face models, and recover their quality."""


def _register_commands() -> None:
    from . import analyze, compress, densify, evaluate, export, push, recover  # noqa: F401  (each registers on ``app``)


_ARGV: list[str] = []


def command_line() -> str:
    """The command as the user typed it, for model cards and summaries ("how it was made")."""
    import shlex

    return "hf-factor-embed " + shlex.join(_ARGV)


#: What a user's mistake raises inside the API: shown as one line, exit status 2.
USER_ERRORS = (FactorEmbedError, FileNotFoundError, NotADirectoryError, IsADirectoryError)

#: Optional dependencies a command may reach -> how to install them.
INSTALL_HINTS = {
    "matplotlib": 'pip install "hf-factor-embed[plots]"',
    "gguf": 'pip install "gguf>=0.10"',
    "tensorboard": "pip install tensorboard",
    **dict.fromkeys(("onnx", "onnxscript", "onnxruntime"), 'pip install "hf-factor-embed[export]"'),
}


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    _register_commands()
    _ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    show_progress()
    try:
        app(args=argv, standalone_mode=False)
    except USER_ERRORS as error:
        return _fail(str(error))
    except ImportError as error:  # an optional dependency the command needs is not installed
        return _fail(_missing_dependency(error))
    except OSError as error:  # e.g. transformers cannot find a model folder or a Hub name
        return _fail(str(error).splitlines()[0])
    except ClickException as error:  # a bad option or argument, found while parsing; no arguments: the help
        return _fail(error.format_message()) if error.format_message() else 2
    except typer.Abort:
        return _fail("aborted", 1)
    except typer.Exit as done:
        return done.exit_code
    return 0


def show_progress() -> None:
    """The plan's progress on stderr (each candidate measured, each budget a quality target tried): a plan on
    Gemma-3 runs for minutes, a target's search for about four plans."""
    import logging

    class ToStderr(logging.Handler):  # whichever sys.stderr is current (tests replace it)
        def emit(self, record: logging.LogRecord) -> None:
            print(self.format(record), file=sys.stderr)

    plan_logger = logging.getLogger("hf_factor_embed.pipeline.plan")
    if not plan_logger.handlers:
        handler = ToStderr()
        handler.setFormatter(logging.Formatter("hf-factor-embed: %(message)s"))
        plan_logger.addHandler(handler)
        plan_logger.setLevel(logging.INFO)


def _fail(message: str, code: int = 2) -> int:
    print(f"hf-factor-embed: error: {message}", file=sys.stderr)
    return code


def _missing_dependency(error: ImportError) -> str:
    message = str(error).splitlines()[0] if str(error) else f"a module could not be imported: {error.name}"
    hint = INSTALL_HINTS.get((error.name or "").split(".")[0])
    hint = hint or next((h for module, h in INSTALL_HINTS.items() if module in message), None)
    return f"{message}; {hint}" if hint else message
