"""Diffusion models unified under EDM: formulations, denoisers, samplers, likelihoods.

Every formulation is the noising process ``x_t = s(t) (x0 + sigma(t) eps)`` (Karras et al.
2022); every model is used through a denoiser ``D(x_hat; sigma)``; every sampler works on
that denoiser in any formulation's coordinates.
"""

from driftlab.diffusion.analytic import GaussianMixture
from driftlab.diffusion.denoisers import (
    PREDICTIONS,
    Denoiser,
    Preconditioning,
    from_denoised,
    get_preconditioning,
    prediction_preconditioning,
    to_denoised,
)
from driftlab.diffusion.formulations import (
    EDM,
    FORMULATIONS,
    VE,
    VP,
    FlowMatching,
    Formulation,
    SubVP,
    get_formulation,
)
from driftlab.diffusion.likelihood import bits_per_dim, log_likelihood
from driftlab.diffusion.metrics import mmd, sliced_wasserstein
from driftlab.diffusion.samplers import (
    ODE_SAMPLERS,
    SAMPLERS,
    evaluations_per_sample,
    make_grid,
    sample,
)

__all__ = [
    "EDM",
    "FORMULATIONS",
    "ODE_SAMPLERS",
    "PREDICTIONS",
    "SAMPLERS",
    "VE",
    "VP",
    "Denoiser",
    "FlowMatching",
    "Formulation",
    "GaussianMixture",
    "Preconditioning",
    "SubVP",
    "bits_per_dim",
    "evaluations_per_sample",
    "from_denoised",
    "get_formulation",
    "get_preconditioning",
    "log_likelihood",
    "make_grid",
    "mmd",
    "prediction_preconditioning",
    "sample",
    "sliced_wasserstein",
    "to_denoised",
]
