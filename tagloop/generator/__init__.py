"""Image generation with diffusers, compatible with AUTOMATIC1111's files, names and metadata.

A1111 compatibility layer (importing this package stays light; torch and diffusers load on use):

* :mod:`.infotext`: the ``parameters`` text (build, parse, read from PNG/JPEG/WebP, atomic PNG save).
* :mod:`.hashes`: ``Model hash``, ``VAE hash``, ``Lora hashes`` as A1111 computes them, cached.
* :mod:`.samplers`: A1111 sampler names and schedule types -> diffusers schedulers.
* :mod:`.prompt_parser`: ``(x:1.2)``, ``[x]``, ``BREAK``, ``<lora:NAME:W>``.
* :mod:`.encode`: weighted, 75-token-chunked CLIP prompt encoding with A1111's clip skip.
"""
