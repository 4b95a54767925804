"""flanrec's SeqIO registrations. `import tasks` registers every prepared dataset it finds.

    import seqio, tasks
    seqio.get_mixture_or_task("ml100k_rec_mix")

Data dirs: $FLANREC_DATA_DIR (MovieLens, default $FLANREC_CACHE/prepared/ml-100k, i.e.
~/.cache/flanrec/prepared/ml-100k, where `prepare` writes without --out) and
$FLANREC_AMAZON_DATA_DIR; Flan instruction data: $FLANREC_FLAN_DATA. For your own prepared
data call `tasks.register_prepared(data_dir, prefix=...)`.
"""

from tasks import amazon, flan, mixtures, movielens  # noqa: F401  (registration side effects)
from tasks._prepared import REGISTERED, register_prepared, unregister_prepared

__all__ = ["REGISTERED", "register_prepared", "unregister_prepared"]
