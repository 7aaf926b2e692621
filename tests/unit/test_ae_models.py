"""The ae_aes models: the DAE as the paper counts it, decoders exact on any machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ae_runtime import load
from models.dae import PaperDAE, parameter_counts
from models.exact import ACC_LIMIT, ExactnessError, check_bounds, check_machine, run_numpy, run_torch
from models.training.training_data import phantom


def test_the_dae_has_the_papers_parameter_counts() -> None:
    total, trainable, non_trainable = parameter_counts(PaperDAE())
    assert (total, trainable, non_trainable) == (76_419, 76_035, 384)
    assert PaperDAE()(torch.zeros(2, 3, 64, 64)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("name", ["ae_lite", "ae_paper"])
def test_the_prediction_is_the_same_integers_with_any_threads_dtype_and_the_integer_reference(name: str) -> None:
    predictor = load(name)
    size = 96 if name == "ae_lite" else 40
    image = phantom(0.45, seed=0)[200 : 200 + size, 180 : 180 + size + 3][None].astype(np.int64)  # odd width
    latent = predictor.encode(image)[0]
    check_bounds(predictor.program, 127)
    reference = run_numpy(predictor.program, latent)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run_torch(predictor.program, torch.from_numpy(latent.astype(np.int64))).numpy())
        results.append(run_torch(predictor.program, torch.from_numpy(latent.astype(np.int64)), dtype=torch.float64).numpy())
    finally:
        torch.set_num_threads(before)
    for got in results:
        assert np.array_equal(got, reference)


def test_a_program_whose_sums_could_round_is_refused() -> None:
    program = list(load("ae_lite").program)
    first = program[0]
    wide = type(first)(first.weight * 0 + ACC_LIMIT // 100, first.bias, first.shift, first.relu, first.final)
    with pytest.raises(ExactnessError):
        check_bounds([wide, *program[1:]], 127)


def test_the_machine_check_notices_a_decoder_that_rounds() -> None:
    predictor = load("ae_lite")
    check_machine(predictor.program, predictor.channels)  # this machine computes it exactly
    program = list(predictor.program)
    last = program[-2]
    # a non-integer weight stands for a backend that computes something else than the program
    bad = type(last)(last.weight.double() + 0.3, last.bias, last.shift, last.relu, last.final)
    with pytest.raises(ExactnessError):
        check_machine([*program[:-2], bad, program[-1]], predictor.channels)
