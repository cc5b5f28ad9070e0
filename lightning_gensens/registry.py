"""The built-in measures, declared once.

Each entry of :data:`BUILT_IN` names a measure's module under ``lightning_gensens/measures/`` and its class; the
order is the order in which the monitor runs them by default. Everything else follows from it:

- :data:`lightning_gensens.measures.MEASURES` and the measure classes that :mod:`lightning_gensens.measures`
  exports;
- one :class:`~lightning_gensens.callbacks.MeasureCallback` per measure, under the measure's class name, in
  :mod:`lightning_gensens.callbacks` and at the package's top level.

A new built-in measure is its own module, one line here and its tests (``tests/measures/test_registry.py`` asks
for its row in the README's measure table). :func:`lightning_gensens.measures.register_measure` adds a measure of
your own to the defaults at run time, without a callback or an export. This module imports nothing, so the
package's top level reads it without loading torch.
"""

from __future__ import annotations

BUILT_IN: tuple[tuple[str, str], ...] = (
    ("trivial", "Trivial"),
    ("average_confidence", "AverageConfidence"),
    ("difference_of_confidences", "DifferenceOfConfidences"),
    ("atc", "AverageThresholdedConfidence"),
    ("temperature_scaling", "TemperatureScaling"),
    ("optimal_transport", "OptimalTransport"),
    ("shift_test", "ShiftTest"),
    ("agreement", "AgreementOnTheLine"),
    ("perturbation_disagreement", "PerturbationDisagreement"),
    ("linf_norm", "LinfNorm"),
    ("active_node_bound", "ActiveNodeBound"),
    ("tangent_sensitivity", "TangentSensitivity"),
    ("region_sensitivity", "RegionSensitivity"),
    ("output_sensitivity", "OutputSensitivity"),
    ("relative_flatness", "RelativeFlatness"),
    ("input_gradient_norm", "InputGradientNorm"),
    ("jacobian_norm", "JacobianNorm"),
    ("fisher_rao_norm", "FisherRaoNorm"),
    ("spectral_norm", "SpectralNorm"),
)
"""``(module in lightning_gensens.measures, class name)`` of every built-in measure; its callback has the same
class name."""

BUILT_IN_NAMES: tuple[str, ...] = tuple(name for _, name in BUILT_IN)
"""The class names of :data:`BUILT_IN`: of the measures and of their callbacks."""
