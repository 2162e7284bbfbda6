"""Distribution strategy for stage 2 (the Keras 3 image model), chosen once per run.

  auto          MirroredStrategy when more than one GPU is visible, else the default strategy
  one_device    OneDeviceStrategy on the first GPU (or the CPU)
  mirrored      MirroredStrategy over all local GPUs (synchronous, one machine)
  multi_worker  MultiWorkerMirroredStrategy; the cluster and this process's role come from the
                TF_CONFIG environment variable (README, "Training on several machines")
  tpu           TPUStrategy over a TPUClusterResolver (--tpu: name or grpc:// address)

Keras 3 on the TensorFlow backend runs `model.fit` under any of these when the model is built
and compiled inside `strategy.scope()`; a tf.data dataset given to `fit` is then split by
Keras: its batch is the *global* batch, divided among the replicas, and in multi-worker mode
each worker reads its own part of it (auto-sharding). Stage 1 (TFRS on tf_keras) never uses
the strategy.

Only the chief writes what a run keeps (checkpoints, metrics.json, TensorBoard, the export);
the other workers run the same code but write into `<workdir>/workertemp_<task_id>`, as in the
Keras multi-worker tutorial. `BackupAndRestore` keeps one directory per worker that way too.
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def make_strategy(name, tpu=""):
    """Returns the tf.distribute strategy `name` (one of STRATEGIES).

    multi_worker must be created before any other TensorFlow op runs in the process: it
    configures the collective ops of the eager context.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name!r}: choose one of {', '.join(STRATEGIES)}")
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment "
                             "variable (cluster and task of this process; see README, "
                             "'Training on several machines')")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
        return _keras3_compatible(tf.distribute.MultiWorkerMirroredStrategy())
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_physical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.get_strategy()  # the default: no distribution


def _keras3_compatible(strategy):
    """Works around two Keras 3 bugs with MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Keras 3's TensorFlow trainer calls `strategy.reduce` with a nested batch (tuple/dict of
    per-replica tensors) before the first step, which this strategy's reduce rejects, and with
    `axis=0` on scalar metric values after every step, which fails. This instance's `reduce`
    maps over the nest and reduces scalars across replicas without an axis; other strategies
    and other instances are untouched. Checked by tests/stage2/test_distribute.py (two workers).
    """
    reduce = strategy.reduce

    def reduce_one(reduce_op, value, axis):
        tensor = value.values[0] if hasattr(value, "values") else value
        return reduce(reduce_op, value, None if tensor.shape.rank == 0 else axis)

    def nested_reduce(reduce_op, value, axis=None):
        return tf.nest.map_structure(lambda v: reduce_one(reduce_op, v, axis), value)

    strategy.reduce = nested_reduce
    return strategy


def task(strategy):
    """(task_type, task_id) of this process; (None, 0) outside a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy):
    """True for the process that writes the run's outputs.

    The chief is the task of type "chief", or worker 0 when the cluster has no "chief" task
    (the TF_CONFIG layout of the Keras multi-worker tutorial); a single process is its own
    chief, and so is the TPU client.
    """
    task_type, task_id = task(strategy)
    if task_type is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    if task_type == "chief":
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def output_dir(workdir, strategy):
    """Where this process writes: the workdir for the chief, a per-worker temp dir otherwise."""
    if is_chief(strategy):
        return workdir
    task_type, task_id = task(strategy)
    path = os.path.join(workdir, f"workertemp_{task_type}_{task_id}")
    tf.io.gfile.makedirs(path)
    return path


def scaled(batch_size, learning_rate, strategy):
    """Global batch size and learning rate for `num_replicas_in_sync` replicas.

    Every replica sees `batch_size` images per step, so the global batch grows with the
    replicas; the learning rate grows linearly with it (Goyal et al., 2017).
    """
    replicas = strategy.num_replicas_in_sync
    return batch_size * replicas, learning_rate * replicas


def describe(strategy):
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return "default strategy (no distribution), 1 replica"
    task_type, task_id = task(strategy)
    where = f", task {task_type}:{task_id}{' (chief)' if is_chief(strategy) else ''}" \
        if task_type else ""
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s){where}"
