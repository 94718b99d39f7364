"""Diffusion models: UNet, VAE, CLIP text encoders, schedulers, pipelines."""
