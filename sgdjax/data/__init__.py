"""Datasets (host numpy arrays, in the original's order) and batch-index samplers."""

from sgdjax.data.cache import RemoteFile, data_dir, fetch, fetch_many
from sgdjax.data.idx import read_idx
from sgdjax.data.mnist import load_mnist
from sgdjax.data.mnist_similar import load_mnist_similar
from sgdjax.data.moons import MoonsData, load_moons, make_moons
from sgdjax.data.sampling import Sampler, make_sampler, random_permutation
from sgdjax.data.shakespeare import ShakespeareData, load_shakespeare, preprocess_text
from sgdjax.data.splits import Percent, SplitSpec, apply_split, parse_split, resolve_split
from sgdjax.data.types import ArraySplit

__all__ = [
    "ArraySplit",
    "MoonsData",
    "Percent",
    "RemoteFile",
    "Sampler",
    "ShakespeareData",
    "SplitSpec",
    "apply_split",
    "data_dir",
    "fetch",
    "fetch_many",
    "load_mnist",
    "load_mnist_similar",
    "load_moons",
    "make_moons",
    "load_shakespeare",
    "make_sampler",
    "parse_split",
    "preprocess_text",
    "random_permutation",
    "read_idx",
    "resolve_split",
]
