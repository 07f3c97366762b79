"""``python -m hf_factor_embed.cli`` (and ``accelerate launch -m hf_factor_embed.cli``)."""

import sys

from . import main

sys.exit(main())
