"""The budget's guesses: every measure declares one, the cheap ones at one forward call at most, and relative
flatness per layer it measures."""

from torch import nn

from lightning_gensens.measures import MEASURES, RelativeFlatness
from lightning_gensens.models import mlp


def test_every_measure_declares_a_guess_and_the_baselines_start_at_once():
    net = mlp(8, 3, hidden=(4,))
    costs = {name: cls().relative_cost_for(net) for name, cls in MEASURES.items()}
    assert all(cost > 0 for cost in costs.values())
    riders = {"trivial", "average_confidence", "difference_of_confidences", "atc", "temperature_scaling", "shift_test"}
    assert {name for name, cost in costs.items() if cost <= 1} == riders  # the keys fresh at every run


def test_relative_flatness_is_guessed_per_layer_it_measures():
    per_layer = RelativeFlatness.relative_cost
    assert RelativeFlatness().relative_cost_for(mlp(8, 3, hidden=(4, 4, 4, 4))) == 5 * per_layer  # all layers
    deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(8)])
    assert RelativeFlatness().relative_cost_for(deep) == per_layer  # the last layer only
    assert RelativeFlatness(layers=["0", "1"]).relative_cost_for(deep) == 2 * per_layer
