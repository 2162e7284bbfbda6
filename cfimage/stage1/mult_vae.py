"""Stage 1's Mult-VAE (Liang et al., WWW 2018) with an item bias: the CF model of the paper's
own code (facebookresearch/collaborative_image_understanding: cornac's VAECF plus an item
bias, trained on binarised interactions with Adam 0.01, batches of 4096 users, 100 epochs,
β = 1, a 64-unit tanh layer on each side of a 32-d bottleneck).

    x_u: user u's binarised row over the fitted items
    encoder: Dense(embedding_dim, tanh) -> mu, log σ² (vae_latent_dim each)
    z = mu + σ·ε while training (ε from a stateless seed per epoch and batch); z = mu when
    scoring
    decoder: Dense(embedding_dim, tanh) -> h_u;  logits = h_u · W + b;  softmax over items
    loss per user: -Σ_i x_ui log softmax(logits)_i + β · KL(N(mu, σ²) || N(0, I)),
    averaged over the batch's users.

An item's CF vector is its column of the last decoder layer plus its bias, [W_i, b_i]
(embedding_dim + 1 numbers, not centred or scaled: the paper's regression targets); a user's
vector is [h_u(mu_u), 1], so that user · item is the decoder's logit and ranks items exactly as
the model does. Users are shuffled every epoch (seeded; cornac iterates them in order).

Runs on tf_keras (TF_USE_LEGACY_KERAS=1) like the rest of stage 1; never imports Keras 3.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf

from cfimage import atomic
from cfimage.errors import UserError


class MultVAE(tf.keras.Model):
    """Encoder and decoder of the module docstring; `item_bias` is b."""

    def __init__(self, num_items, hidden_dim, latent_dim):
        super().__init__()
        self.encoder_hidden = tf.keras.layers.Dense(hidden_dim, activation="tanh",
                                                    name="encoder_hidden")
        self.encoder_mu = tf.keras.layers.Dense(latent_dim, name="encoder_mu")
        self.encoder_logvar = tf.keras.layers.Dense(latent_dim, name="encoder_logvar")
        self.decoder_hidden = tf.keras.layers.Dense(hidden_dim, activation="tanh",
                                                    name="decoder_hidden")
        # W without a bias of its own: b is the item bias (the paper's VAEWithBias).
        self.decoder_items = tf.keras.layers.Dense(num_items, use_bias=False,
                                                   name="decoder_items")
        self.item_bias = self.add_weight(name="item_bias", shape=(num_items,),
                                         initializer="zeros")

    def encode(self, x):
        hidden = self.encoder_hidden(x)
        return self.encoder_mu(hidden), self.encoder_logvar(hidden)

    def decode_hidden(self, z):
        return self.decoder_hidden(z)

    def call(self, x, noise_seed=None):
        """(logits, mu, logvar); z = mu + σ·ε with ε drawn from `noise_seed` (a stateless
        seed: a resumed run draws what the uninterrupted one would), or z = mu without."""
        mu, logvar = self.encode(x)
        z = mu
        if noise_seed is not None:
            z += tf.exp(0.5 * logvar) * tf.random.stateless_normal(tf.shape(mu), noise_seed)
        return self.decoder_items(self.decode_hidden(z)) + self.item_bias, mu, logvar

    def item_vectors(self):
        """[W_i, b_i] per item: (num_items, hidden_dim + 1)."""
        weights = self.decoder_items.kernel.numpy().T
        return np.concatenate([weights, self.item_bias.numpy()[:, None]], axis=1)

    def user_vectors(self, matrix, batch_size):
        """[h_u(mu_u), 1] per row of the CSR `matrix`: (num_users, hidden_dim + 1)."""
        parts = []
        for start in range(0, matrix.shape[0], batch_size):
            x = matrix[start:start + batch_size].toarray()
            parts.append(self.decode_hidden(self.encode(x)[0]).numpy())
        hidden = np.concatenate(parts)
        return np.concatenate([hidden, np.ones((len(hidden), 1), np.float32)], axis=1)


def loss_per_user(x, logits, mu, logvar, beta):
    """The loss of the module docstring for each user of a batch."""
    log_softmax = tf.nn.log_softmax(logits, axis=1)
    likelihood = tf.reduce_sum(x * log_softmax, axis=1)
    kl = -0.5 * tf.reduce_sum(1.0 + logvar - tf.square(mu) - tf.exp(logvar), axis=1)
    return beta * kl - likelihood


def fit(matrix, config, log, writer=None, backup_dir=None, phase="full"):
    """Trains a fresh MultVAE on the CSR user x item `matrix` (1 where a user touched an
    item) -> (user vectors, item vectors, per-epoch mean loss). With `backup_dir`, a
    checkpoint after every epoch lets a killed run resume after its last completed epoch."""
    tf.keras.utils.set_random_seed(config.seed)
    num_users, num_items = matrix.shape
    model = MultVAE(num_items, config.embedding_dim, config.vae_latent_dim)
    optimizer = tf.keras.optimizers.Adam(config.vae_learning_rate)
    model(np.zeros((1, num_items), np.float32))  # build before a checkpoint is restored
    matrix = matrix.astype(np.float32).tocsr()

    @tf.function(reduce_retracing=True)
    def step(x, noise_seed):
        with tf.GradientTape() as tape:
            logits, mu, logvar = model(x, noise_seed=noise_seed)
            loss = tf.reduce_mean(loss_per_user(x, logits, mu, logvar, config.vae_beta))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    losses, manager, loss_file = [], None, None
    if backup_dir:
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch)
        manager = tf.train.CheckpointManager(checkpoint, backup_dir, max_to_keep=1)
        loss_file = os.path.join(backup_dir, "losses.json")
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint)
            if tf.io.gfile.exists(loss_file):
                losses = json.loads(tf.io.gfile.GFile(loss_file).read())
            log(f"resuming stage 1 from epoch {int(epoch.numpy())} ([{phase}] Mult-VAE: "
                f"restored from {backup_dir})")
    rng = np.random.default_rng(config.seed)
    orders = [rng.permutation(num_users) for _ in range(config.vae_epochs)]
    start = time.time()
    for index in range(int(epoch.numpy()), config.vae_epochs):
        total = 0.0
        order = orders[index]
        for batch, begin in enumerate(range(0, num_users, config.vae_batch_size)):
            rows = order[begin:begin + config.vae_batch_size]
            noise_seed = tf.constant([config.seed, index * 1_000_003 + batch], tf.int64)
            total += float(step(tf.constant(matrix[rows].toarray()), noise_seed)) * len(rows)
        losses.append(total / num_users)
        if not np.isfinite(losses[-1]):
            raise UserError(f"stage 1 [{phase}] Mult-VAE: the loss became {losses[-1]} in "
                            f"epoch {index + 1}; try a lower --cf_vae_learning_rate")
        epoch.assign(index + 1)
        if manager:
            manager.save()
            atomic.write_json(loss_file, losses)
        if (index + 1) % 10 == 0 or index + 1 == config.vae_epochs:
            log(f"stage 1 [{phase}] Mult-VAE epoch {index + 1}/{config.vae_epochs}: loss "
                f"{losses[-1]:.4f} (per user; {time.time() - start:.1f}s)")
        if writer is not None:
            with writer.as_default():
                tf.summary.scalar(f"stage1/{phase}/loss", losses[-1], step=index + 1)
    users = model.user_vectors(matrix, max(config.vae_batch_size, 1))
    return users.astype(np.float32), model.item_vectors().astype(np.float32), losses
