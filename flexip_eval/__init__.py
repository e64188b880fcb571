"""`python -m flexip_eval`: the paper's automatic metrics for FlexIP, IP-Adapter and the base model on a
DreamBench-style benchmark, in one command (judges, tables, charts)."""
