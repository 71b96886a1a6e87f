"""Input / output (layer 4): cohort discovery and validation (nibabel), label sets, NIfTI maps, networks,
checkpoints, MONAI bundles, provenance hashes, the demo cohort.
"""
