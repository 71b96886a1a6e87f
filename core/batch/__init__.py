"""Batch (layer 7): run configuration, plan, the patient pipeline, executors (local, Ray), shards, merge.
"""
