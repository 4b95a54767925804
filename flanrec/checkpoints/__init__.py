"""flanrec checkpoints on Orbax: per-step training state, params-only checkpoints, and loading
any checkpoint (HF, T5X, flanrec, adapters + backbone).

Layout (one job writes a MODEL_DIR; any number of readers):

    MODEL_DIR/checkpoint_{step}/params      Orbax PyTree (sharded arrays, OCDBT)
                               /ema_params  Orbax PyTree, runs with EMA_DECAY > 0: the moving
                                            average inference uses (meta: inference_params)
                               /opt_state   Orbax PyTree (optional)
                               /meta        JSON: model_config, step, rng, data_position, version
    PARAMS_DIR/params, PARAMS_DIR/meta      params-only checkpoint (what `flanrec.convert` writes)

Three modules, one question each:

- `integrity`: which directory may be read — complete (Orbax's commit marker), intact
  (recorded checksums), and which step a MODEL_DIR resolves to;
- `store`: writing and reading flanrec's own checkpoints (`TrainCheckpointer`,
  params-only save/load, restores straight into shardings);
- `loading`: any checkpoint by path — `load_params_any` / `load_checkpoint` for HF, T5X,
  flanrec and adapter checkpoints (backbone + adapters).

The names below are the package's API; import them from `flanrec.checkpoints`.
"""

from flanrec.checkpoints.integrity import (
    BEST_FILE,
    EMA_PARAMS,
    INFERENCE_PARAMS_KEY,
    META,
    OPT_STATE,
    PARAMS,
    STEP_PREFIX,
    DamagedCheckpointError,
    best_step,
    check_integrity,
    complete_steps,
    is_complete,
    latest_complete_step,
    newest_verified,
    record_checksums,
    resolve_checkpoint,
    step_dir,
    verify_checkpoint,
)
from flanrec.checkpoints.loading import (
    CheckpointRef,
    checkpoint_format,
    is_adapter_checkpoint,
    load_adapter_checkpoint,
    load_checkpoint,
    load_params_any,
    local_checkpoint,
    read_adapters,
    read_meta,
)
from flanrec.checkpoints.store import (
    TrainCheckpointer,
    load_optimizer_state,
    load_params,
    restore_params,
    save_params_checkpoint,
)

__all__ = ["BEST_FILE", "EMA_PARAMS", "INFERENCE_PARAMS_KEY", "META", "OPT_STATE", "PARAMS",
           "STEP_PREFIX", "CheckpointRef",
           "DamagedCheckpointError", "TrainCheckpointer", "best_step", "check_integrity",
           "checkpoint_format", "complete_steps", "is_adapter_checkpoint", "is_complete",
           "latest_complete_step", "load_adapter_checkpoint", "load_checkpoint",
           "load_optimizer_state", "load_params", "load_params_any", "local_checkpoint",
           "newest_verified", "read_adapters", "read_meta", "record_checksums",
           "resolve_checkpoint", "restore_params", "save_params_checkpoint", "step_dir",
           "verify_checkpoint"]
