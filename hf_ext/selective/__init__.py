"""Selective-layer fine-tuning: train chosen blocks (fully or with LoRA) while the blocks below them run
under ``torch.no_grad()``, so the frozen prefix records no autograd graph and saves no activations."""
