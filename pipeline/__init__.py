"""ImageNet loading for AlexNet-style training: a DALI pipeline over the shards of `preprocess build-shards`.

Heavy imports (DALI, torch) happen on first use of the loader, not at `import pipeline`.
"""

__all__ = ["ImageNetLoader", "LoaderConfig", "DistInfo", "LoaderError", "NoShardsError", "ShardError", "CacheSpaceError"]


def __getattr__(name):
    if name == "ImageNetLoader":
        from pipeline.loader import ImageNetLoader

        return ImageNetLoader
    if name == "LoaderConfig":
        from pipeline.config import LoaderConfig

        return LoaderConfig
    if name == "DistInfo":
        from pipeline.sharding import DistInfo

        return DistInfo
    if name in ("LoaderError", "NoShardsError", "ShardError", "CacheSpaceError"):
        from pipeline import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
