"""Analysis (layer 2): statistics (bootstrap, paired tests), cohort summaries from bins, strata, quality maths.
"""
