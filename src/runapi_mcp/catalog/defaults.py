"""The image tools' defaults, each defined once: the tools' signatures, their soft options, the prompts and the
demo read them here (``tests/test_tools.py`` checks that the tools publish them and that every model of each
tool takes a call that leaves them out).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

DEFAULT_MODEL = "gpt-image-2"  # generate_image's and edit_image's model when the caller names none
DEFAULT_UPSCALE_MODEL = "topaz-upscale-image"  # upscale_image's

# generate_image's and edit_image's aspect_ratio and output_resolution when the caller gives none: GPT Image 2's,
# sent only where the chosen model takes that value ("soft"), so a model without the field (or the value) is not
# refused for a default the caller never chose. The tools' signatures take their defaults from here: a signature
# default that differed would be sent as the caller's own choice, and refused by every model without the field.
SOFT_DEFAULTS: Mapping[str, str] = MappingProxyType({"aspect_ratio": "auto", "output_resolution": "1k"})
