"""tagloop: image -> tagger -> filters -> prompt -> generator -> tagger again -> report."""

__version__ = "0.1.0"
