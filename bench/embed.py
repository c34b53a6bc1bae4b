"""Embedding throughput: raw SentenceTransformer.encode vs idxr-pg's EmbeddingService.

One run, the same texts for every measurement: distinct, realistic ``path: value`` texts
of mixed lengths (names, product descriptions, notes; about 2% longer than the model's
256 tokens). Both sides use the same model object, batch size and precision; the service
runs without a cache, so the ratio is the price of idxr-pg's own work (token counting,
truncation, hashing, batching). bf16 vs fp32 is measured on raw encode and on the service.
The ONNX Runtime backend (float32 and int8 exports, `idxr_pg.embedding.onnx_export`) runs
through the same service; every variant's speed is also given as a ratio to raw torch fp32
``encode``, and its quality as the p1 (1st percentile) and minimum cosine of its vectors to
torch fp32's, text by text (the bar for a default: p1 >= 0.99).

Each measurement is repeated ``--rounds`` times, interleaved (raw and idxr-pg back to back,
their order alternating by round). Ratios are the median over rounds of the ratio within a
round, which a load change on these small shared machines disturbs least; texts/s are the
best round. CPU time (of this process) is printed beside wall time: with ``--threads 1`` it
hardly depends on what else runs on the machine.

    .venv/bin/python bench/embed.py [--texts 2000] [--rounds 3] [--batch-size 32] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from idxr_pg.config import EmbeddingSettings  # noqa: E402
from idxr_pg.embedding import EmbeddingService, EmbedRequest, load_embedder  # noqa: E402
from idxr_pg.embedding.onnx_backend import OnnxEmbedder  # noqa: E402
from idxr_pg.embedding.sentence_transformer import SentenceTransformerEmbedder  # noqa: E402

COMPANIES = ["Acme Logistics", "Noordzee Data", "Brightwave Media", "Helix Health", "Polder Energy"]
SUFFIXES = ["B.V.", "GmbH", "Ltd", "Inc.", "S.A.", "AB"]
PRODUCTS = ["Fibre Business", "Mobile Fleet", "Cloud Backup", "Managed Firewall", "SIP Trunk"]
SPEEDS = ["100 Mbit/s", "500 Mbit/s", "1 Gbit/s", "10 Gbit/s"]
CITIES = ["Amsterdam", "Utrecht", "Rotterdam", "Antwerp", "Hamburg", "Lyon", "Leeds"]
FEATURES = [
    "a static IPv4 address and a routed /29 block",
    "24/7 monitoring by the network operations centre",
    "a service level agreement with four-hour fault repair",
    "redundant uplinks over physically separate routes",
    "unlimited data within the European Union",
    "daily encrypted snapshots kept for thirty days",
    "a dedicated account manager and quarterly reviews",
    "automatic failover to a 4G backup connection",
    "intrusion prevention with weekly signature updates",
    "priority support through a named engineer",
]
NOTES = [
    "The customer asked to move the installation date because the building works overran.",
    "Billing was corrected after a duplicate invoice was sent for the previous quarter.",
    "Engineer reported that the patch panel in the basement is not labelled.",
    "Contract renewal is due in spring; the customer is comparing two competing offers.",
    "Access to the roof requires a key from the facility manager on the ground floor.",
    "Latency complaints were traced to a misconfigured switch on the customer side.",
]


def realistic_texts(count: int, seed: int = 42) -> list[str]:
    """``count`` distinct ``path: value`` texts, the same for a given seed."""
    rng = random.Random(seed)
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < count:
        n = len(texts)
        roll = rng.random()
        if roll < 0.30:
            path = "subscription.customer.name"
            value = f"{rng.choice(COMPANIES)} {rng.choice(CITIES)} {rng.choice(SUFFIXES)}"
            value += f" (account {rng.randint(1000, 99999)})"
        elif roll < 0.55:
            path = f"subscription.product.blocks.{rng.randint(0, 5)}.name"
            value = f"{rng.choice(PRODUCTS)} {rng.choice(SPEEDS)} {rng.choice(CITIES)}"
        elif roll < 0.85:
            path = "subscription.product.description"
            picked = rng.sample(FEATURES, rng.randint(1, 6))
            value = (
                f"{rng.choice(PRODUCTS)} at {rng.choice(SPEEDS)} for sites in "
                f"{rng.choice(CITIES)}, including " + ", ".join(picked) + "."
            )
        elif roll < 0.98:
            path = f"subscription.notes.{rng.randint(0, 9)}.text"
            value = " ".join(rng.choice(NOTES) for _ in range(rng.randint(1, 8)))
            value += f" Ticket {rng.randint(10000, 999999)}."
        else:
            path = "subscription.contract.terms"
            value = " ".join(rng.choice(NOTES + FEATURES) for _ in range(rng.randint(25, 45)))
        text = f"{path}: {value}"
        if text not in seen:
            seen.add(text)
            texts.append(text)
        elif n > count * 50:
            raise RuntimeError("generator cannot make enough distinct texts")
    return texts


def autocast_for(embedder: SentenceTransformerEmbedder) -> contextlib.AbstractContextManager[Any]:
    """The precision context the embedder itself runs in, for the raw encode side."""
    if embedder.precision == "bfloat16":
        return torch.autocast(embedder.model.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def raw_runner(embedder: SentenceTransformerEmbedder, texts: list[str], batch_size: int):
    def run() -> np.ndarray:
        with autocast_for(embedder):
            return embedder.model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
            )

    return run


def service_runner(embedder: SentenceTransformerEmbedder, texts: list[str], batch_size: int):
    settings = EmbeddingSettings(max_batch_size=batch_size)
    service = EmbeddingService(embedder, settings, cache=None)
    requests = [EmbedRequest(f"bench:{i}", text) for i, text in enumerate(texts)]

    def run() -> np.ndarray:
        return np.stack([result.vector for result in service.embed(requests)])

    return run


def timed(run: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """Wall seconds, CPU seconds of this process, and the vectors."""
    wall, cpu = time.perf_counter(), time.process_time()
    vectors = run()
    return time.perf_counter() - wall, time.process_time() - cpu, vectors


def load_average() -> str:
    with contextlib.suppress(OSError), open("/proc/loadavg", encoding="ascii") as handle:
        return " ".join(handle.read().split()[:3])
    return "unknown"


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
                wanted |= {"avx512_vnni", "avx_vnni", "amx_int8"}
                return sorted(flags & wanted)
    return []


Key = tuple[str, str]
PRECISIONS = ("bfloat16", "float32")
ONNX = ("onnx-float32", "onnx-int8")
VARIANTS = (*PRECISIONS, *ONNX)
BASE: Key = ("raw", "float32")


def schedule(rounds: int) -> Iterator[Key]:
    """Every (side, variant) once per round; odd rounds run the round in reverse order so
    that a load change during a round does not always favour the same side."""
    keys = [(side, p) for p in PRECISIONS for side in ("raw", "idxr")]
    keys += [("idxr", variant) for variant in ONNX]
    for number in range(rounds):
        yield from keys if number % 2 == 0 else reversed(keys)


def paired_median(rates: dict[Key, list[float]], top: Key, bottom: Key) -> float:
    """Median over rounds of rates[top] / rates[bottom] measured in the same round."""
    return float(np.median([a / b for a, b in zip(rates[top], rates[bottom], strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    texts = realistic_texts(args.texts)
    embedders: dict[str, SentenceTransformerEmbedder] = {
        precision: load_embedder(EmbeddingSettings(backend="torch", precision=precision))
        for precision in PRECISIONS
    }
    for variant in ONNX:
        precision = variant.split("-", 1)[1]
        embedders[variant] = load_embedder(EmbeddingSettings(backend="onnx", precision=precision))
    for embedder in embedders.values():
        assert isinstance(embedder, SentenceTransformerEmbedder), embedder
    auto = load_embedder(EmbeddingSettings())
    tokens = np.array(embedders["float32"].count_tokens(texts))
    limit = embedders["float32"].max_tokens

    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, flags {' '.join(cpu_flags())}")
    import onnxruntime

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, threads "
        f"{torch.get_num_threads()}, device cpu; auto choice here: {auto!r}"
    )
    print(
        f"texts: {len(texts)} distinct, tokens mean {tokens.mean():.0f} / median "
        f"{np.median(tokens):.0f} / max {tokens.max()}, {(tokens > limit).sum()} over {limit}"
    )
    print(f"batch size {args.batch_size}, {args.rounds} interleaved rounds\n")

    runners = {}
    for precision, embedder in embedders.items():
        embedder.embed(texts[:64])  # warm-up: first calls allocate and pick kernels
        if not isinstance(embedder, OnnxEmbedder):
            runners[("raw", precision)] = raw_runner(embedder, texts, args.batch_size)
        runners[("idxr", precision)] = service_runner(embedder, texts, args.batch_size)

    print(f"load average before: {load_average()}")
    wall_rate: dict[Key, list[float]] = {key: [] for key in runners}
    cpu_rate: dict[Key, list[float]] = {key: [] for key in runners}
    vectors: dict[Key, np.ndarray] = {}
    for key in schedule(args.rounds):
        wall, cpu, vectors[key] = timed(runners[key])
        wall_rate[key].append(len(texts) / wall)
        cpu_rate[key].append(len(texts) / cpu)
        print(
            f"  {key[0]:>4} {key[1]:<9} {len(texts) / wall:8.1f} texts/s wall ({wall:5.1f} s), "
            f"{len(texts) / cpu:8.1f} texts per CPU-second"
        )
    print(f"load average after: {load_average()}\n")

    print("texts/s wall clock (best round) | texts per CPU-second (best round)")
    for key in runners:
        label = "raw encode" if key[0] == "raw" else "idxr-pg embedder"
        print(f"  {key[1]:<12} {label:<17} {max(wall_rate[key]):8.1f} | {max(cpu_rate[key]):8.1f}")
    print("\nratios: median over rounds of the ratio within each round (wall | CPU)")
    for precision in PRECISIONS:
        wall_ratio = paired_median(wall_rate, ("idxr", precision), ("raw", precision))
        cpu_ratio = paired_median(cpu_rate, ("idxr", precision), ("raw", precision))
        print(
            f"  idxr-pg / raw encode, {precision:<9} {wall_ratio:6.3f} | {cpu_ratio:6.3f}"
            "   (goal >= 0.95)"
        )
    for side, label in (("raw", "raw encode"), ("idxr", "idxr-pg")):
        wall_ratio = paired_median(wall_rate, (side, "bfloat16"), (side, "float32"))
        cpu_ratio = paired_median(cpu_rate, (side, "bfloat16"), (side, "float32"))
        print(f"  bf16 speed-up over fp32, {label:<10} {wall_ratio:5.2f}x | {cpu_ratio:5.2f}x")
    reference = vectors[("idxr", "float32")]
    print("\nevery variant through the idxr-pg embedder, against raw torch fp32 encode:")
    print("  variant       speed (wall | CPU)   cosine to torch fp32: p1 / min / mean")
    for variant in VARIANTS:
        key = ("idxr", variant)
        wall_ratio = paired_median(wall_rate, key, BASE)
        cpu_ratio = paired_median(cpu_rate, key, BASE)
        cosine = (vectors[key] * reference).sum(axis=1)
        verdict = "passes" if np.percentile(cosine, 1) >= 0.99 else "FAILS"
        print(
            f"  {variant:<12} {wall_ratio:5.2f}x | {cpu_ratio:5.2f}x       "
            f"{np.percentile(cosine, 1):.5f} / {cosine.min():.5f} / {cosine.mean():.5f}"
            f"  ({verdict} p1 >= 0.99)"
        )
    agree = (vectors[("idxr", "float32")] * vectors[("raw", "float32")]).sum(axis=1)
    print(f"cosine idxr vs raw (fp32, same texts): min {agree.min():.5f}")


if __name__ == "__main__":
    main()
