"""Stage 2's runtime, set once at start-up: threads, precision, XLA and the distribution
strategy, with the global batch and learning rate that follow from the replicas.

The strategy is created before TensorFlow runs any op (multi_worker needs that). Only the
chief writes the run's outputs; other workers write under <workdir>/workertemp_*
(cfimage/stage2/distribute.py).
"""

import dataclasses

import keras
import tensorflow as tf

from cfimage.errors import UserError
from cfimage.stage2 import distribute


@dataclasses.dataclass(frozen=True)
class Runtime:
    strategy: object  # tf.distribute.Strategy
    chief: bool
    outdir: str  # where this process writes: the workdir, or a worker's own directory
    global_batch: int
    learning_rate: float  # --learning_rate scaled by the replicas
    jit_compile: bool
    mixed_precision: bool


def start(stage2, workdir, threads=0, log=print):
    """The Runtime of a run with the Stage2Config `stage2` (cfimage/config.py)."""
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    mixed = stage2.mixed_precision == "true" or (stage2.mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    jit = stage2.jit_compile == "true" or (stage2.jit_compile == "auto" and bool(gpus))
    log(f"devices: {len(gpus)} GPU(s); precision {'mixed_float16' if mixed else 'float32'}; "
        f"XLA {'on' if jit else 'off'}")

    try:
        strategy = distribute.make_strategy(stage2.strategy, stage2.tpu)
    except ValueError as error:
        raise UserError(str(error)) from None
    chief = distribute.is_chief(strategy)
    outdir = distribute.output_dir(workdir, strategy)
    global_batch, learning_rate = distribute.scaled(stage2.batch_size, stage2.learning_rate,
                                                    strategy)
    log(f"strategy: {distribute.describe(strategy)}; global batch {global_batch} "
        f"(--batch_size={stage2.batch_size} per replica), learning rate {learning_rate:g} "
        f"(--learning_rate={stage2.learning_rate:g} x {strategy.num_replicas_in_sync})"
        + ("" if chief else f"; this worker writes to {outdir}"))
    return Runtime(strategy, chief, outdir, global_batch, learning_rate, jit, mixed)
