"""The `make run` job: a real workload on a private shoal cluster.

1. Monte Carlo estimate of pi over thousands of tasks (numpy when available).
2. Pool.map over a generated text corpus: word counts and primes.
3. An actor that accumulates results as they arrive.
4. A large array in the shared-memory object store, analysed in slices by
   tasks that read it without copying.
5. The speed-up against running the same work serially, and the cluster status.

Run: python examples/main_job.py [--samples N] [--tasks N] [--docs N] [--array-mb N]
"""

import argparse
import collections
import json
import math
import os
import random
import time

import shoal

try:
    import numpy as np
except ImportError:  # the job works without numpy, just slower per sample
    np = None


# ---------------------------------------------------------------- workload

def pi_samples(seed, n):
    """Counts, of n random points in the unit square, those inside the circle."""
    if np is not None:
        rng = np.random.default_rng(seed)
        inside = 0
        for start in range(0, n, 1 << 16):
            m = min(1 << 16, n - start)
            x, y = rng.random(m), rng.random(m)
            inside += int(np.count_nonzero(x * x + y * y <= 1.0))
        return inside
    rng = random.Random(seed)
    rnd = rng.random
    return sum(1 for _ in range(n) if rnd() ** 2 + rnd() ** 2 <= 1.0)


WORDS = ("shoal fish swim together in the sea while the current carries plankton past "
         "reef and rock where the light falls green and the water is cold and deep").split()


def make_corpus(ndocs, words_per_doc, seed=7):
    """A reproducible corpus: words, with one token in ten a 7-digit number."""
    rng = random.Random(seed)
    docs = []
    for _ in range(ndocs):
        tokens = rng.choices(WORDS, k=words_per_doc)
        for i in range(0, words_per_doc, 10):
            tokens[i] = str(rng.randrange(1_000_000, 10_000_000))
        docs.append(" ".join(tokens))
    return docs


def analyse(doc):
    """Word counts of one document and the primes among its numbers."""
    counts = collections.Counter()
    primes = []
    for token in doc.split():
        if token.isdigit():
            n = int(token)
            if is_prime(n):
                primes.append(n)
        else:
            counts[token] += 1
    return counts, primes


def is_prime(n):
    """Trial division (deliberately CPU-bound)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    for d in range(3, math.isqrt(n) + 1, 2):
        if n % d == 0:
            return False
    return True


@shoal.remote
def pi_task(seed, n):
    return pi_samples(seed, n)


@shoal.remote
class Accumulator:
    """Collects partial results of the Monte Carlo run."""

    def __init__(self):
        self.inside = 0
        self.total = 0
        self.batches = 0

    def add(self, inside, n):
        self.inside += inside
        self.total += n
        self.batches += 1
        return self.batches

    def estimate(self):
        return {"pi": 4.0 * self.inside / max(1, self.total), "samples": self.total,
                "batches": self.batches}


@shoal.remote
def slice_stats(data, start, stop):
    """Statistics of data[start:stop]; `data` is a read-only view of the one
    copy in shared memory (no pickling, no copy per task)."""
    part = data[start:stop]
    hist, _ = np.histogram(part, bins=16, range=(-4.0, 4.0))
    return len(part), float(part.sum()), float((part * part).sum()), hist


def combine(stats):
    n = sum(s[0] for s in stats)
    total = sum(s[1] for s in stats)
    squares = sum(s[2] for s in stats)
    mean = total / n
    return mean, math.sqrt(max(0.0, squares / n - mean * mean)), sum(s[3] for s in stats)


def run_array(data, pieces):
    ref = shoal.put(data)  # one copy into the object store
    step = -(-len(data) // pieces)
    stats = shoal.get([slice_stats.remote(ref, i, min(len(data), i + step))
                       for i in range(0, len(data), step)])
    return combine(stats), shoal.status()["store"]


# ---------------------------------------------------------------- the job

def timed(fn, *args):
    t0 = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t0


def run_pi(tasks, per_task):
    acc = Accumulator.remote()
    # Each task's Future goes straight to the actor: the call waits for it in
    # the engine and receives its value; the driver never blocks per task.
    for seed in range(tasks):
        acc.add.remote(pi_task.remote(seed, per_task), per_task)
    result = acc.estimate.remote().result(timeout=120)
    shoal.kill(acc)
    return result


def run_corpus(docs):
    with shoal.Pool() as pool:
        results = pool.map(analyse, docs)
    return merge(results)


def merge(results):
    total = collections.Counter()
    primes = set()
    for counts, ps in results:
        total.update(counts)
        primes.update(ps)
    return total, primes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500, help="Monte Carlo tasks")
    parser.add_argument("--samples", type=int, default=100_000_000 if np else 4_000_000,
                        help="Monte Carlo samples in all")
    parser.add_argument("--docs", type=int, default=1000, help="documents in the corpus")
    parser.add_argument("--array-mb", type=int, default=512,
                        help="size of the array analysed through the object store (MiB)")
    args = parser.parse_args()
    per_task = max(1, args.samples // args.tasks)

    t0 = time.perf_counter()
    info = shoal.init()
    print(f"shoal {shoal.__version__}: private cluster at {info['address']} "
          f"({info['node']['num_workers']} workers), started in {time.perf_counter() - t0:.2f}s")

    print(f"\n1. Monte Carlo pi: {args.tasks} tasks x {per_task} samples "
          f"({'numpy' if np else 'pure Python'})")
    est, t_par = timed(run_pi, args.tasks, per_task)
    _, t_ser = timed(lambda: sum(pi_samples(s, per_task) for s in range(args.tasks)))
    print(f"   pi ~ {est['pi']:.6f} (error {abs(est['pi'] - math.pi):.2e}) from {est['samples']} "
          f"samples in {est['batches']} batches accumulated by an actor")
    print(f"   shoal {t_par:.2f}s, serial {t_ser:.2f}s: speed-up x{t_ser / t_par:.2f}")

    docs = make_corpus(args.docs, 2000)
    print(f"\n2. Pool.map over a corpus of {len(docs)} documents (word counts, primes)")
    (counts, primes), t_par = timed(run_corpus, docs)
    (counts_s, primes_s), t_ser = timed(lambda: merge(map(analyse, docs)))
    assert counts == counts_s and primes == primes_s, "parallel and serial results differ"
    top = ", ".join(f"{w} {n}" for w, n in counts.most_common(5))
    print(f"   {sum(counts.values())} words, top: {top}; {len(primes)} distinct primes")
    print(f"   shoal {t_par:.2f}s, serial {t_ser:.2f}s: speed-up x{t_ser / t_par:.2f}")

    if np is not None:
        data = np.random.default_rng(3).standard_normal(args.array_mb * (1 << 20) // 8)
        print(f"\n3. A {data.nbytes >> 20} MiB array in shared memory, analysed in slices by "
              f"{4 * info['node']['num_workers']} tasks")
        ((mean, std, hist), store), t_par = timed(run_array, data,
                                                  4 * info["node"]["num_workers"])
        (mean_s, std_s, hist_s), t_ser = timed(
            lambda: combine([slice_stats.__wrapped__(data, 0, len(data))]))
        assert (hist == hist_s).all() and math.isclose(mean, mean_s, abs_tol=1e-9)
        print(f"   mean {mean:+.5f}, std {std:.5f}; {store['objects']} object(s) in the store "
              f"({store['used'] >> 20} MiB of {store['capacity'] >> 20} MiB), read in place")
        print(f"   shoal {t_par:.2f}s (including the put), serial {t_ser:.2f}s: "
              f"speed-up x{t_ser / t_par:.2f}")
        del data

    print("\n4. Cluster status")
    print(textwrap_indent(json.dumps(shoal.status(), indent=2, default=str)))
    shoal.shutdown()
    print(f"\ndone in {time.perf_counter() - t0:.1f}s on {os.cpu_count()} CPUs")


def textwrap_indent(text):
    return "\n".join("   " + line for line in text.splitlines())


if __name__ == "__main__":
    main()
