"""Training (layer 6): one training loop for segmentation models, ensemble members, snapshots and auxiliary nets.
"""
