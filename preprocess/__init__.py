"""Offline preparation of ImageNet-layout folders into WebDataset shards plus train statistics."""
