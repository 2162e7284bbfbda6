"""A fingerprint of stage-1 vectors that tells rounding apart from other vectors.

    python scripts/stage1_fingerprint.py write VECTORS.npz OUT.json
    python scripts/stage1_fingerprint.py check VECTORS.npz RECORDED.json

(VECTORS.npz as stage 1 writes it, e.g. <workdir>/stage1/cf_embeddings.npz: `vectors`, and
`ids` if present.) `check` exits 0 when the vectors are the recorded ones, bit for bit
("same vectors (sha256 equal)") or up to rounding ("same vectors up to rounding ..."), 1 when
they differ beyond the tolerance, 2 on a bad file.

Why: stage 1 is bit-reproducible on one CPU model but not across CPUs. TensorFlow's oneDNN
sgemm picks its kernel per processor, so the vectors of the same run differ in the last bits
(MovieLens, 2859 x 64 float32 values of std ~0.2: max |diff| 1.3e-6, mean ~1e-7 between an AMD
EPYC and an Intel Xeon Sapphire Rapids; recall@10 identical), which changes their sha256.

The fingerprint (a JSON object): n_items, dim, dtype, the sha256 of the vectors' bytes (and of
the ids, if given), the per-dimension mean and std (float64) and P = 16 random projections of
the centred vectors, proj[k, j] = sum_i s[i, k] * (x[i, j] - mean[j]), with signs s[i, k] = +1
where np.random.default_rng(0).random((n_items, 16))[i, k] < 0.5, else -1. The generator fills
that array row by row from one stream, so item i's signs are the same whatever n_items is (a
longer catalogue extends the sign matrix, it does not reshuffle it).

`compare` measures each difference in units of its natural scale, with scale_j = the larger of
the two per-dimension stds (1 where both are 0): |d mean_j| / scale_j, |d std_j| / scale_j and
|d proj[k, j]| / (sqrt(n_items) * scale_j), sqrt(n_items) * std being the size of a sum of
n_items centred values with random signs. Default tolerance 1e-3 on the largest of them:
  * rounding moves every value by ~1e-7 (at most ~1e-6), uncorrelated with the signs, so the
    means and stds move by ~1e-7 and the projections by ~sqrt(n) * 1e-7, i.e. ~1e-6 of the
    scale (std ~0.2); the largest of the 2 * 64 + 16 * 64 statistics stays within a few times
    that. Pessimistic check: uniform noise of +-1.3e-6 on every MovieLens value gives 1.1e-5,
    a hundred times below the tolerance (1e-4 would leave only a factor 9);
  * other vectors move the projections or stds by O(scale): another seed or model, the rows
    in another order (MovieLens: 4.5), a scale change of more than 1e-3; one item's vector of
    2859 replaced or halved moves a projection by ~1 / sqrt(n_items) of the scale (3.2e-2,
    thirty times above the tolerance).
n_items, dim and the ids' sha256 must be equal.
"""

import argparse
import hashlib
import json
import math
import platform
import sys

import numpy as np

from cfimage.errors import UserError

N_PROJECTIONS = 16
TOLERANCE = 1e-3
SAME_BITS = "same vectors (sha256 equal)"


def _signs(n_items):
    """The +-1 signs of the projections, (n_items, N_PROJECTIONS); row i independent of n."""
    draws = np.random.default_rng(0).random((n_items, N_PROJECTIONS))
    return np.where(draws < 0.5, 1.0, -1.0)


def _cpu():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ids_sha256(ids):
    text = "\n".join(str(i) for i in np.asarray(ids).tolist())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(vectors, ids=None):
    """The fingerprint (a JSON-able dict) of a 2-D array of item vectors (and their ids)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise UserError(f"stage-1 vectors must be a 2-D float array, not {vectors.dtype} of "
                        f"shape {vectors.shape}")
    x = vectors.astype(np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    projections = _signs(len(x)).T @ (x - mean)
    result = {
        "n_items": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "dtype": str(vectors.dtype),
        "sha256": hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest(),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "projections": projections.tolist(),
        "construction": "proj[k, j] = sum_i s[i, k] * (x[i, j] - mean[j]), s = +1 where "
                        "np.random.default_rng(0).random((n_items, 16)) < 0.5 else -1",
        "cpu": _cpu(),
    }
    if ids is not None:
        result["ids_sha256"] = _ids_sha256(ids)
    return result


def compare(a, b, tol=TOLERANCE):
    """(same, max_abs_diff, message) for two fingerprints (module docstring: the scales).

    max_abs_diff is the largest difference of their statistics in units of its scale (0 when
    the sha256 are equal, inf when the shapes or ids differ); same when it is <= tol.
    """
    if a["sha256"] == b["sha256"]:
        return True, 0.0, SAME_BITS
    for key in ("n_items", "dim", "ids_sha256"):
        if key in a and key in b and a[key] != b[key]:
            return False, math.inf, f"other vectors: {key} {a[key]} vs {b[key]}"
    std_a, std_b = np.asarray(a["std"], np.float64), np.asarray(b["std"], np.float64)
    scale = np.maximum(std_a, std_b)
    scale = np.where(scale > 0, scale, 1.0)
    diffs = {
        "mean": np.abs(np.subtract(a["mean"], b["mean"])) / scale,
        "std": np.abs(std_a - std_b) / scale,
        "projections": np.abs(np.subtract(a["projections"], b["projections"]))
        / (math.sqrt(a["n_items"]) * scale),
    }
    # NaN (vectors with NaN) counts as differing.
    worst = {k: float(np.max(np.where(np.isnan(v), math.inf, v))) for k, v in diffs.items()}
    largest = max(worst.values())
    if largest <= tol:
        return True, largest, (
            f"same vectors up to rounding (max |diff| {largest:.1e} of the per-dimension std, "
            f"tolerance {tol:.0e}; sha256 differs: another CPU's floating-point kernels)")
    which = max(worst, key=worst.get)
    return False, largest, (
        f"other vectors: their {which} differ by up to {largest:.2g} of the per-dimension std "
        f"(tolerance {tol:.0e}; rounding across CPUs gives ~1e-5 at most), "
        f"sha256 {a['sha256'][:8]} vs {b['sha256'][:8]}")


def load_vectors(path):
    """(vectors, ids or None) of an .npz with `vectors` (stage 1's cf_embeddings.npz)."""
    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npz of stage-1 vectors ({e})") from e
    if not hasattr(data, "files"):
        raise UserError(f"{path}: an .npy array, not an .npz with 'vectors' (and 'ids')")
    with data:
        if "vectors" not in data.files:
            raise UserError(f"{path}: no 'vectors' array (has {data.files})")
        vectors, ids = data["vectors"], (data["ids"] if "ids" in data.files else None)
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise UserError(f"{path}: 'vectors' must be a 2-D float array, not {vectors.dtype} of "
                        f"shape {vectors.shape}")
    return vectors, ids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write the fingerprint of VECTORS.npz to OUT.json")
    write.add_argument("vectors")
    write.add_argument("out")
    check = sub.add_parser("check", help="exit 0 when VECTORS.npz matches RECORDED.json")
    check.add_argument("vectors")
    check.add_argument("recorded")
    check.add_argument("--tol", type=float, default=TOLERANCE)
    args = parser.parse_args(argv)
    try:
        ours = fingerprint(*load_vectors(args.vectors))
        if args.command == "write":
            with open(args.out, "w", encoding="utf-8") as f:
                json.dump(ours, f, indent=1)
                f.write("\n")
            print(f"{args.out}: fingerprint of {ours['n_items']} x {ours['dim']} vectors "
                  f"(sha256 {ours['sha256'][:8]})")
            return 0
        try:
            with open(args.recorded, encoding="utf-8") as f:
                recorded = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{args.recorded}: not a readable fingerprint ({e})") from e
        try:
            same, _, message = compare(recorded, ours, args.tol)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{args.recorded}: not a fingerprint of this script ({e!r})") from e
        print(message, file=sys.stdout if same else sys.stderr)
        return 0 if same else 1
    except UserError as e:
        print(f"stage1_fingerprint.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
