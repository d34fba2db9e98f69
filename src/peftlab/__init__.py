"""peftlab: parameter-efficient fine-tuning experiments as a Snakemake pipeline.

Stages, each runnable as `python -m peftlab.<stage>`:
data (generate, tokenize), models (build), train, evaluate, merge, tables.
"""

__version__ = "0.1.0"
