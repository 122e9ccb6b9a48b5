"""evaluate_generator under a real `accelerate launch` with 2 CPU processes scores exactly the samples
(and so gives the same scores as) a single process."""

from __future__ import annotations

import json
import subprocess

import conftest
import pytest
from conftest import PYTHON, REPO, accelerate_launch
from eval_support import classifier_file

PROBE = REPO / "tests" / "eval_support.py"


@pytest.fixture(scope="session")
def classifier(tmp_path_factory, mnist_shards):
    return classifier_file(tmp_path_factory, mnist_shards)


@pytest.mark.slow
def test_two_processes_give_the_same_scores_as_one(classifier, mnist_shards, tmp_path):
    n = "201"  # not a multiple of the world size: rank 1's share is padded for the gather
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    subprocess.run([PYTHON, str(PROBE), str(mnist_shards), str(classifier), str(one), n], check=True,
                   env=conftest.test_env(), timeout=300, cwd=REPO)
    accelerate_launch([str(PROBE), str(mnist_shards), str(classifier), str(two), n], timeout=300)
    single = json.loads((one / "rank0.json").read_text())
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert single["world"] == 1 and all(r["world"] == 2 for r in ranks)
    assert ranks[0]["scores"] == ranks[1]["scores"]  # broadcast: every rank returns the scores
    assert all(r["training"] for r in ranks)  # the generator's train mode is restored
    s1, s2 = single["scores"], ranks[0]["scores"]
    assert s1["n"] == s2["n"] == 201
    for key, value in s1.items():
        assert s2[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
