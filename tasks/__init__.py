"""Prefect tasks: thin adapters from typed artifacts to sft_core, one module per stage."""
