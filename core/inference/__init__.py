"""Inference (layer 5): method grammar, forward passes, uncertainty maps, precision, resampling, temperature.
"""
