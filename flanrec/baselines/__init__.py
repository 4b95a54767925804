"""Classical baselines ranked by the very same split, masking and metric code as the LM.

`python -m flanrec.baselines --data_dir DIR --model popularity|sasrec|all --out OUT` writes
their top-K lists in the JSONL `predict` format of `flanrec.infer` (tasks `popularity` and
`sasrec`), so `python -m flanrec.eval --baselines OUT` puts them beside the model.
"""
