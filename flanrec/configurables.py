"""Every gin configurable the gin jobs (train, infer, eval) bind, made to exist by importing
this one module.

Why one module: the three jobs read overlapping gin files (tpu_scripts/launch.sh hands every
job the experiment's model and partitioning files, eval.gin includes infer.gin), so each job
must know every name those files bind, or gin refuses the file. Each job's command line
imports this module before `flanrec.frontend.gin_cli.configure_gin`, and calls its job
through the configurable registered here; no job imports another job to get names
registered.

What is registered here: the classes gin builds (`@T5Config()`, `@LoraConfig()`, ...) and
the three job functions, under the gin names they have always had (`flanrec.train.train`,
`flanrec.infer.infer`, `flanrec.eval.evaluate`). The functions that code also calls directly
(`make_optimizer`, `logical_axis_rules`, `peak_flops_total`, `DatasetConfig`, the data
layer's settings) keep T5X's `@gin.configurable` where they are defined, so a direct call
reads the same bindings; importing their modules here is what registers them.

Imports TensorFlow and JAX (the data layer and the jobs): a command line imports this module
inside its `cli`, after `flanrec.frontend.jobs.run` has set TensorFlow's environment.
"""

from __future__ import annotations

import gin

from flanrec import partitioning
from flanrec.data import length_check, vocab
from flanrec.eval import job as eval_job
from flanrec.infer import job as infer_job
from flanrec.infer.rank_eval import RankEvalConfig
from flanrec.model import adapters
from flanrec.model.config import T5Config
from flanrec.train import flops, inputs, losses, optimizers
from flanrec.train import job as train_job

# Decorated where they are defined (called directly too); imported for their registration.
DECORATED_MODULES = (partitioning, length_check, vocab, flops, inputs, losses, optimizers)

# Plain frozen dataclasses: registering (not decorating) keeps instances of the real class
# while gin checks every field name (`T5Config.d_modle = …` fails at parse time).
gin.register(T5Config, module="flanrec.model.config")
gin.register(adapters.PromptConfig, module="flanrec.peft")
gin.register(adapters.LoraConfig, module="flanrec.peft")
gin.register(RankEvalConfig, module="flanrec.inference")

# The jobs, as gin calls them: `train.model_dir = ...`, `infer.mode = ...`, `evaluate.ks = ...`.
train = gin.external_configurable(train_job.train, module="flanrec.train",
                                  denylist=["devices"])
infer = gin.external_configurable(infer_job.infer, module="flanrec.infer")
evaluate = gin.external_configurable(eval_job.evaluate, module="flanrec.eval")
