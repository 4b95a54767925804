"""Parameter-efficient tuning on a frozen Flan-T5 backbone: which parameters train.

`params` splits the tree into trainable adapters and frozen backbone, masks optimizers and
initialises a soft prompt from the vocabulary. What the adapters *are* (soft prompt and LoRA
configs, their parameter names/shapes/logical axes, the LoRA merge) is part of the model,
`flanrec.model.adapters`; adapter checkpoints are read by `flanrec.checkpoints.loading`.
"""
