"""DistributedDataParallel AlexNet training on the `pipeline` loader (`torchrun trainer/main.py`)."""
