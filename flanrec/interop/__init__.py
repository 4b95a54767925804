"""Other projects' formats: Hugging Face and T5X checkpoints (`hf`, `t5x`, `t5x_adafactor`),
tokenizers and vocabulary files (`hf_tokenizer`, `vocabulary`), what an export shares
(`exports`). Read by `flanrec.checkpoints` and `flanrec.api`, written by
`python -m flanrec.convert`."""
