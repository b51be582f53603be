"""Tag filters: from the tagger's raw tags to the tags worth putting in a prompt.

One file per filter (``blocklist``, ``rating``, ``style``, ``overlap``, ``replace``, ``order``);
each takes and returns ``list[TagScore]`` and records what it did in a :class:`FilterLog`.
:func:`apply_filters` runs them all in a fixed order (see :mod:`tagloop.filters.chain`).
"""

from .base import FilterFileError, FilterLog, Removal, TagPattern, parse_pattern
from .blocklist import Blocklist, filter_blocklist, load_blocklist, load_blocklist_filter, parse_blocklist, read_blocklist
from .chain import FilterChain, FilterSettings, apply_filters, build_chain
from .order import dedupe_tags, limit_tags, order_tags
from .overlap import drop_overlapping_tags, implied_by
from .rating import drop_ratings, is_rating, rating_name
from .replace import ReplaceMap, load_replacements, read_replace_file, replace_tags
from .style import StyleGroup, StyleRules, apply_style, builtin_styles, read_style_file, resolve_style

__all__ = [
    "Blocklist",
    "FilterChain",
    "FilterFileError",
    "FilterLog",
    "FilterSettings",
    "Removal",
    "ReplaceMap",
    "StyleGroup",
    "StyleRules",
    "TagPattern",
    "apply_filters",
    "apply_style",
    "build_chain",
    "builtin_styles",
    "dedupe_tags",
    "drop_overlapping_tags",
    "drop_ratings",
    "filter_blocklist",
    "implied_by",
    "is_rating",
    "limit_tags",
    "load_blocklist",
    "load_blocklist_filter",
    "load_replacements",
    "order_tags",
    "parse_blocklist",
    "parse_pattern",
    "rating_name",
    "read_blocklist",
    "read_replace_file",
    "read_style_file",
    "replace_tags",
    "resolve_style",
]
