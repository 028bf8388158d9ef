"""ImageNet loading for AlexNet-style training: a DALI pipeline over the shards of `preprocess build-shards`.

Heavy imports (DALI, torch) happen on first use of the loader, not at `import pipeline`.
"""

__all__ = ["ImageNetLoader"]


def __getattr__(name):
    if name == "ImageNetLoader":
        from pipeline.loader import ImageNetLoader

        return ImageNetLoader
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
