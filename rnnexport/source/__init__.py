"""The torch front end: what a user points at, turned into a :class:`RecurrentModel`.

The seed cells and their gate orders, torch.nn modules, users' cells and causal
loop modules, trained-model cards; everything here may import torch, and nothing
here imports the exporter or the layers above it.
"""
