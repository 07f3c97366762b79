"""Exactly the import-time lines of optional dependencies that say nothing to a user of this package.

transformers imports torchao wherever it is installed (``.ci/install`` installs 0.18.0 for ExecuTorch's export).
That torchao's compiled extensions do not load on Python 3.11 (its kernels are optional: the export uses none of
them), and it registers Enum classes with torch's pytree, which torch 2.13 deprecates: four lines on stderr before
anything else, so a one-line refusal was never the only line. Filters drop those records and nothing else.
"""

from __future__ import annotations

import logging

#: logger -> the start (or, after ``*``, a part) of the messages dropped.
_NOISE = {
    "torchao": "Failed to load ",
    "torch.utils._pytree": "*is an Enum subclass and is now natively supported by torch.compile",
}


class _DropNoise(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if self.pattern.startswith("*"):
            return self.pattern[1:] not in message
        return not message.startswith(self.pattern)


def silence_import_noise() -> None:
    """Install the filters once (before transformers' quantizers import torchao)."""
    for name, pattern in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise(pattern))


silence_import_noise()
