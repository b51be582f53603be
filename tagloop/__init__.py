"""tagloop: image -> tagger -> filters -> prompt -> generator -> tagger again -> report.

The public API, imported lazily (``import tagloop`` loads neither torch nor diffusers)::

    import tagloop

    tagger = tagloop.load_tagger("SmilingWolf/wd-swinv2-tagger-v3")
    result = tagger.tag("a.png")                      # TagResult: .tags, .rating, .threshold, .error
    prompt = tagloop.compose_prompt(result, preset="sd15-anime")
    gen = tagloop.load_generator("anything-v5.safetensors")
    images = gen.generate(prompt=prompt.positive, negative_prompt=prompt.negative, seed=42)
    run = tagloop.reproduce("a.png", tagger=tagger, generator=gen, variants=4, refine=2, out_dir="runs")
    print(run.best["f1"], run.best["why"])            # ReproduceResult; run.report is report.json
"""

__version__ = "0.1.0"

_API = {
    "load_tagger": "api",
    "tag": "api",
    "compose_prompt": "api",
    "load_generator": "api",
    "read_infotext": "api",
    "clear_cache": "api",
    "reproduce": "api",
    "compare": "api",
    "ReproduceResult": "pipeline.reproduce",
    "ReproduceSettings": "pipeline.reproduce",
    "Comparison": "pipeline.reproduce",
    "VariantResult": "pipeline.reproduce",
    "TagloopError": "errors",
    "ConfigError": "errors",
    "InputError": "errors",
    "OutputPathError": "errors",
    "ModelNotFoundError": "errors",
    "ModelFileError": "errors",
    "GPUUnavailableError": "errors",
    "HubError": "errors",
    "TagResult": "tagger.result",
    "TagScore": "tagger.result",
    "TagOptions": "tagger.run",
    "PromptSettings": "prompt.composer",
    "ComposedPrompt": "prompt.composer",
    "GenerationSettings": "generator.settings",
    "GeneratedImage": "generator.settings",
    "Generator": "generator.generate",
    "Tagger": "tagger.base",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'tagloop' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
