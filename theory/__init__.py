"""Closed-form maths of the linear Meta-LoRA model (docs/convention.md; the paper's Section 3 and Figure 1).

Problem instances (:mod:`theory.problem`), the Meta-LoRA loss L and the reduced loss G with their analytic
derivatives (:mod:`theory.meta`, :mod:`theory.reduced`), standard retraining (:mod:`theory.sr`), fine-tuning
(:mod:`theory.finetune`), the O(k)^T symmetry and Hessian inertia (:mod:`theory.symmetry`), known minimisers
(:mod:`theory.minima`), a trust-region solver (:mod:`theory.optimize`), the theorem checks (:mod:`theory.checks`,
:mod:`theory.verify`), the finite-sample experiment of Figure 1 (:mod:`theory.linear_settings`,
:mod:`theory.linear_stats`, :mod:`theory.linear_experiment`, :mod:`theory.linear_results`) and autograd
references (:mod:`theory.autograd_ref`).
The command line is ``python -m theory`` (:mod:`theory.cli_contract`).

Every public name below is imported from its submodule on first use (PEP 562): ``import theory`` imports neither
NumPy nor torch, so ``python -m theory`` answers a Ctrl-C during its start-up with one line, and torch is imported
only by the autograd references, when they run.

>>> import theory
>>> theory.Problem.random(d=4, k=1, T=2, seed=0).W.shape
(2, 4, 4)
"""

from ._lazy import lazy_exports

#: submodule -> the public names it defines (its ``__all__``; tests/theory/test_theory_api.py keeps the two equal)
_MODULES = {
    "problem": ("ProblemError", "Problem", "MetaPoint", "require_remark_3_1", "require_finite", "first_nonfinite"),
    "meta": ("meta_residuals", "meta_loss", "meta_grad", "meta_grad_flat", "meta_hvp", "meta_hess"),
    "reduced": ("optimal_A", "reduced_residuals", "reduced_loss", "reduced_grad", "reduced_hvp", "reduced_hess",
                "schur_complement"),
    "sr": ("sr_loss", "sr_grad", "sr_hess", "sr_minimiser"),
    "finetune": ("FinetuneResult", "finetune_optimum", "tail_energy"),
    "symmetry": ("orbit_tangent", "boost_tangent", "symmetry_tangent", "quotient_basis", "Inertia", "inertia",
                 "restricted_inertia"),
    "minima": ("random_orthogonal", "global_minimiser", "d1_family_point"),
    "optimize": ("SolveOptions", "SolveResult", "STATUS", "minimise_reduced"),
    "checks": ("CheckResult", "numerical_rank", "theorem_3_1_rank", "corollary_1_sr_test_loss",
               "meta_lora_reduced_loss", "theorem_3_2_rank", "corollary_2_rank_3k_fit", "theorem_3_3_recovery",
               "meta_lora_test_loss", "second_order_stationarity"),
    "verify": ("VerifyReport", "run_verify"),
    "linear_settings": ("PANELS", "PANEL_FIXED", "DEFAULTS", "Settings", "panel_settings", "settings_dict"),
    "linear_stats": ("Stats", "sufficient_stats", "empirical_loss", "meta_empirical", "sr_empirical",
                     "lora_empirical"),
    "linear_experiment": ("Instance", "draw_instance", "step_sizes", "BATCHED_STEPS", "run_setting", "run_panels"),
    "linear_results": ("SettingResult", "setting_summary", "summary_rows"),
    "autograd_ref": ("torch_meta_loss", "torch_reduced_loss", "autograd_meta", "autograd_reduced"),
}

#: public name -> the submodule defining it
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
