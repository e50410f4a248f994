"""uPETe's Poisson diffusion (``petsynth.diffusion.PoissonDiffusion``) against what an acquisition at a lower
dose must give: noise that grows with t as 1 / sqrt(dose fraction), the mean SUV kept, the schedule's ends."""

import math

import numpy as np
import pytest
import torch

from petsynth.diffusion import PoissonDiffusion

N = 64


def _disc(suv: float = 2.0) -> torch.Tensor:
    """(1, 1, N, N): a uniform disc of ``suv`` filling most of the field of view."""
    y, x = np.mgrid[:N, :N] - (N - 1) / 2
    return torch.from_numpy(np.where(x ** 2 + y ** 2 < (0.42 * N) ** 2, suv, 0.0).astype(np.float32))[None, None]


def _centre() -> np.ndarray:
    y, x = np.mgrid[:N, :N] - (N - 1) / 2
    return x ** 2 + y ** 2 < (0.25 * N) ** 2


def test_schedule_runs_from_the_standard_dose_to_min_dose_evenly_in_log_dose():
    process = PoissonDiffusion(num_timesteps=400, min_dose=0.01)
    assert float(process.dose_fraction(0)) == 1.0
    assert float(process.dose_fraction(399)) == pytest.approx(0.01)
    d = process.dose_fractions.numpy()
    assert np.all(np.diff(d) < 0)
    np.testing.assert_allclose(np.diff(np.log(d)), math.log(0.01) / 399)  # lambda_t linear in t
    for fraction in (1.0, 1 / 4, 1 / 10, 1 / 20, 1 / 50, 1 / 100):  # the dose sweep's reduction factors
        t = process.timestep_for_dose(fraction)
        assert float(process.dose_fraction(t)) == pytest.approx(fraction, rel=0.012)  # one step in log dose
    assert process.timestep_for_dose(1e-4) == 399
    with pytest.raises(ValueError):
        process.timestep_for_dose(0.0)


def test_noise_grows_with_t_as_one_over_the_root_of_the_dose_and_the_mean_suv_stays():
    process = PoissonDiffusion(num_timesteps=400)
    x0 = _disc(2.0).repeat(8, 1, 1, 1)
    centre = _centre()
    generator = torch.Generator().manual_seed(0)
    steps = [0, 100, 200, 300, 399]
    std, mean = [], []
    for t in steps:
        x_t = process.q_sample(x0, torch.full((8,), t), generator=generator)[:, 0].numpy()
        std.append(float(x_t[:, centre].std()))
        mean.append(float(x_t[:, centre].mean()))
    assert all(a < b for a, b in zip(std, std[1:])), std
    dose = process.dose_fraction(torch.tensor(steps)).numpy()
    np.testing.assert_allclose(np.array(std) / std[0], 1 / np.sqrt(dose), rtol=0.25)
    np.testing.assert_allclose(mean, 2.0, rtol=0.02)


def test_attenuation_lowers_the_counts_so_the_noise_rises_where_the_body_is_dense():
    process = PoissonDiffusion(num_timesteps=10)
    x0 = _disc(2.0).repeat(8, 1, 1, 1)
    mu = (_disc(1.0) * 0.096).repeat(8, 1, 1, 1)  # water at 511 keV, cm^-1
    generator = torch.Generator().manual_seed(1)
    plain = process.q_sample(x0, 5, generator=generator)[:, 0].numpy()[:, _centre()]
    attenuated = process.q_sample(x0, 5, generator=generator, mu=mu)[:, 0].numpy()[:, _centre()]
    assert attenuated.std() > 1.5 * plain.std()  # exp(-0.096 x 21 cm) of the counts survive the centre
    assert attenuated.mean() == pytest.approx(2.0, rel=0.03)  # attenuation-corrected: the same SUV


def test_bad_inputs_are_refused():
    process = PoissonDiffusion(num_timesteps=10)
    with pytest.raises(ValueError, match="square"):
        process.q_sample(torch.zeros(1, 1, 32, 48), 0)
    with pytest.raises(ValueError, match="0..9"):
        process.q_sample(torch.zeros(1, 1, 32, 32), 10)
    with pytest.raises(ValueError):
        PoissonDiffusion(min_dose=1.0)


def test_the_dose_is_read_off_the_noise_of_a_draw_at_that_dose():
    """Draws of the process at a known dose from a slice with flat organs: the estimate recovers the dose
    within 25 %."""
    y, x = np.mgrid[:N, :N] - (N - 1) / 2
    body = x ** 2 / (0.42 * N) ** 2 + y ** 2 / (0.32 * N) ** 2 < 1
    organ = (x - 8) ** 2 + (y + 4) ** 2 < 9 ** 2
    truth = torch.from_numpy(np.where(organ, 2.5, np.where(body, 1.0, 0.0)).astype(np.float32))[None, None]
    process = PoissonDiffusion(num_timesteps=400)
    generator = torch.Generator().manual_seed(5)
    for fraction in (0.25, 0.05, 0.012):
        low = process.q_sample(truth.repeat(8, 1, 1, 1), process.timestep_for_dose(fraction), generator=generator)
        estimate = process.estimate_dose_fraction(low, generator=generator)
        assert fraction / 1.25 < estimate < fraction * 1.25, (fraction, estimate)
    with pytest.raises(ValueError, match="too little"):
        process.estimate_dose_fraction(torch.zeros(2, 1, N, N))
